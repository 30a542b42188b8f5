"""Quality failures injected into the engine's rendered attempts, in every process of a test's `csm-render run`
(the CLI and the Ray workers it starts), through a `sitecustomize` on their PYTHONPATH (see `hook_env`).

Random weights make noise that fails every check, so with CSM_TEST_QC_FAULTS=1 each attempt's audio is replaced by
a speech-like signal the checks pass (voiced syllables at ~12 letters a second, ended by the model), and
turn 1 of a conversation named for a fault gets it on its first attempt only (then the real judge and the real
retries run):
- "qc-silent*": near silence (mostly_silence);
- "qc-half*": the audio cut to its first 15%, as when half its words are skipped (too_fast);
- "qc-maxlen*": the model never ended the turn (max_length);
- "qc-always*": turn 0 is silent on every attempt: none passes, so the least bad is kept and flagged.

With CSM_TEST_QC_TRANSIENT_SEED=<job seed>, the faults of turn 1 hit only its render with the seed that job seed
gives it (the first pass): a re-render pass (`run --rerender-failed`, another seed) renders it cleanly, as it would
a real turn whose failure was bad luck. "qc-always" stays failed in every pass.

With CSM_TEST_RETRY_MARK=PATH, every re-render touches PATH and then takes CSM_TEST_RETRY_SLEEP_S longer, so a test
can kill the run while one is in flight.

The codes stay the engine's own: only what the judge sees (and a committed turn's audio) is replaced.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import time
from pathlib import Path

import numpy as np

TARGET = "csm_worker.engine.engine"
LETTERS_PER_S = 12.0


def speech_like(num_samples: int, sample_rate: int, seed: int) -> np.ndarray:
    """Syllable-rate (4 Hz) bursts of a voiced tone over the whole clip: no pause, no clipping."""
    t = np.arange(num_samples) / sample_rate
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t + seed)
    return (0.3 * envelope * np.sin(2 * np.pi * (140 + 10 * (seed % 5)) * t)).astype(np.float32)


def fault_for(conversation_id: str, turn_index: int, attempt: int, seed: int | None = None) -> str | None:
    for name in ("silent", "half", "maxlen"):
        if conversation_id.startswith(f"qc-{name}") and turn_index == 1 and attempt == 1 and \
                _first_pass(conversation_id, turn_index, seed):
            return name
    return "silent" if conversation_id.startswith("qc-always") and turn_index == 0 else None


def _first_pass(conversation_id: str, turn_index: int, seed: int | None) -> bool:
    job_seed = os.environ.get("CSM_TEST_QC_TRANSIENT_SEED")
    if not job_seed or seed is None:
        return True
    from jobs.plan.order import turn_seed

    return seed == turn_seed(int(job_seed), conversation_id, turn_index)


def apply(turn) -> None:
    """The attempt as the test wants the judge to see it."""
    turn.end_reason = "eos"
    turn.audio = speech_like(turn.num_frames * 1920, turn.sample_rate, turn.turn_index)
    fault = fault_for(turn.conversation_id, turn.turn_index, turn.attempt, turn.seed)
    if fault == "silent":
        turn.audio = np.full_like(turn.audio, 1e-5)
    elif fault == "half":
        turn.audio = turn.audio[: int(0.15 * len(turn.audio))]
    elif fault == "maxlen":
        turn.end_reason = "max_length"


def patch(engine_module) -> None:
    Engine = engine_module.Engine
    attach, retry = Engine._attach_audio, Engine._retry

    def attach_audio(self, finished):
        attach(self, finished)
        if os.environ.get("CSM_TEST_QC_FAULTS") == "1":
            for turn in finished:
                apply(turn)

    def slow_retry(self, row):
        mark = os.environ.get("CSM_TEST_RETRY_MARK")
        if mark:
            Path(mark).touch()
            time.sleep(float(os.environ.get("CSM_TEST_RETRY_SLEEP_S") or 0))
        retry(self, row)

    Engine._attach_audio, Engine._retry = attach_audio, slow_retry


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches the engine module right after it is first imported (importing it at start-up would import torch in
    every Python process Ray starts)."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    sys.meta_path.insert(0, _PatchOnImport())


def hook_env(folder: Path, base: dict | None = None, **env: str) -> dict:
    """The environment (`base`, default os.environ) of a run with this module installed in each of its processes:
    a sitecustomize in `folder` that installs it, first on PYTHONPATH, plus `env`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qc_faults.py").write_text(Path(__file__).read_text())
    (folder / "sitecustomize.py").write_text("import qc_faults\nqc_faults.install()\n")
    merged = dict(os.environ if base is None else base, **env)
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), merged.get("PYTHONPATH")]))
    return merged
