"""End to end: `csm-render run` on a real manifest, a real local Ray and the `random:tiny` model.

Each Ray start costs seconds, so one first run (module fixture) serves most checks, and the re-run, resume and
--new-run tests work on copies of its output folder. The CLI runs in a subprocess, from a folder other than the
manifest's, so relative audio paths must resolve against the manifest. The first run starts (and stops) its own
local Ray; the later rendering runs join one local Ray that this module starts once (`--address`, as a job on a
running cluster would), and the run_job tests use that Ray in-process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from jobs.storage import layout
from jobs.plan.order import turn_seed
from jobs.storage import TMP_PREFIX

pytestmark = pytest.mark.slow

SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 1920
MAX_MS = 400  # the job default for every test run: 5 frames a turn at most
JOB_ARGS = ("--model", "random:tiny", "--max-audio-length-ms", MAX_MS, "--batch-size", 2)

# (conversation_id, turn_index, speaker, text, optional columns). "intro" turn 0 is given (a voice prompt);
# "kitchen" carries per-row settings that must win over the job defaults.
ROWS = [
    ("intro", 0, 0, "This is my voice.", {"audio": "voices/prompt.wav"}),
    ("intro", 1, 1, "Nice to hear you.", {}),
    ("intro", 2, 0, "Shall we begin?", {}),
    ("intro", 3, 1, "Yes, let us.", {}),
    ("kitchen", 0, 0, "Did you buy the bread?", {}),
    ("kitchen", 1, 1, "I did, and some cheese.", {"temperature": 0.7, "top_k": 10, "seed": 42, "pause_ms": 300}),
    ("kitchen", 2, 0, "Perfect.", {"max_audio_length_ms": 240}),
    ("short", 0, 1, "Hi.", {}),
    ("short", 1, 0, "Hello.", {}),
    ("station", 0, 1, "Is this the train to the coast?", {}),
    ("station", 1, 0, "It is.", {}),
    ("station", 2, 1, "Thank you.", {}),
]
OPTIONAL_TYPES = {"audio": pa.string(), "temperature": pa.float64(), "top_k": pa.int32(), "seed": pa.int64(),
                  "pause_ms": pa.int32(), "max_audio_length_ms": pa.int32()}
RENDERED = {(cid, idx) for cid, idx, _, _, extra in ROWS if "audio" not in extra}
BY_KEY = {(cid, idx): (speaker, text, extra) for cid, idx, speaker, text, extra in ROWS}


def write_manifest(folder: Path, rows=ROWS, drop: tuple[str, ...] = ()) -> Path:
    """The manifest (rows in reverse order: the loader must sort turns) plus its 16 kHz stereo voice prompt."""
    (folder / "voices").mkdir(parents=True, exist_ok=True)
    t = np.arange(8000) / 16_000  # 0.5 s
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1)
    sf.write(folder / "voices" / "prompt.wav", stereo, 16_000, subtype="PCM_16")
    rows = list(reversed(rows))
    columns = {
        "conversation_id": pa.array([r[0] for r in rows], pa.string()),
        "turn_index": pa.array([r[1] for r in rows], pa.int32()),
        "speaker": pa.array([r[2] for r in rows], pa.int32()),
        "text": pa.array([r[3] for r in rows], pa.string()),
    }
    for name, type_ in OPTIONAL_TYPES.items():
        columns[name] = pa.array([r[4].get(name) for r in rows], type_)
    for name in drop:
        del columns[name]
    path = folder / "dialogue.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def turns_rendered(result) -> int:
    match = re.search(r"turns rendered: (\d+)", result.stdout)
    assert match, f"no summary in stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return int(match.group(1))


def ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def metadata_rows(out: Path) -> list[dict]:
    return ds.dataset(out / "metadata", format="parquet").to_table().to_pylist()


def snapshot(out: Path, *folders: str) -> dict[str, tuple[int, bytes]]:
    """(mtime_ns, bytes) of every file under the given folders of OUT."""
    files = [p for folder in folders for p in sorted((out / folder).rglob("*")) if p.is_file()]
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def tmp_files(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]


def codes_of(out: Path, cid: str, idx: int) -> np.ndarray:
    return np.load(out / layout.codes_key(cid, idx), allow_pickle=False)


@dataclass
class Run:
    root: Path  # the folder the CLI runs in
    manifest: Path
    out: Path
    result: object
    rows: list[dict]

    def command(self, out: Path, *extra) -> tuple:
        return ("run", self.manifest, "--out", out, *JOB_ARGS, *extra)


@pytest.fixture(scope="module")
def ray_session(csm_cache):
    """One local Ray for this module's later runs: in-process for run_job (which leaves a Ray it did not start
    running), by address for the CLI."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_address(ray_session) -> str:
    return ray_session.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def first(tmp_path_factory, csm_render) -> Run:
    root = tmp_path_factory.mktemp("cli-run")
    manifest = write_manifest(root / "manifest")
    out = root / "out"
    # As a user's shell runs it: no RAY_AUTH_MODE, so the local Ray picks its own authentication mode.
    result = csm_render("run", manifest.relative_to(root), "--out", "out", *JOB_ARGS, cwd=root,
                        unset=("RAY_AUTH_MODE", "RAY_ADDRESS"))
    ok(result)
    return Run(root, manifest, out, result, metadata_rows(out))


def copy_out(first: Run, name: str) -> Path:
    dest = first.root / name
    shutil.copytree(first.out, dest)
    return dest


# --- the first run -----------------------------------------------------------------------------------------------

def test_first_run_renders_every_turn_once(first):
    keys = [(r["conversation_id"], r["turn_index"]) for r in first.rows]
    assert len(keys) == len(set(keys)), f"duplicate metadata rows: {sorted(keys)}"
    assert set(keys) == RENDERED
    assert turns_rendered(first.result) == len(RENDERED)
    assert "0 failed" in first.result.stdout


def test_first_run_files_match_their_metadata(first):
    for row in first.rows:
        where = f"{row['conversation_id']}/{row['turn_index']}"
        assert row["audio_path"] == layout.audio_key(row["conversation_id"], row["turn_index"], ".wav"), where
        audio_file = first.out / row["audio_path"]
        assert audio_file.is_file(), where
        info = sf.info(str(audio_file))
        samples, rate = sf.read(str(audio_file), dtype="float32")
        assert (rate, info.channels, info.format) == (SAMPLE_RATE, 1, "WAV"), where
        assert samples.ndim == 1 and len(samples) == row["num_samples"], where
        assert row["sample_rate"] == SAMPLE_RATE, where
        assert row["num_samples"] == row["num_frames"] * SAMPLES_PER_FRAME, where
        assert row["duration_s"] == pytest.approx(row["num_samples"] / SAMPLE_RATE), where
        assert hashlib.sha256(audio_file.read_bytes()).hexdigest() == row["sha256"], where
        codes = np.load(first.out / row["codes_path"], allow_pickle=False)
        assert codes.shape == (32, row["num_frames"]), where
        assert codes.min(initial=0) >= 0 and codes.max(initial=0) < 2051, where


def test_a_local_run_says_nothing_of_ray_token_authentication(first):
    # Ray warns that a new local cluster turned token authentication on unless the mode is set explicitly; a user
    # who never asked for a cluster has nothing to do about it.
    assert "Token authentication" not in first.result.stderr and "RAY_AUTH_MODE" not in first.result.stderr


def test_first_run_metadata_columns(first):
    for row in first.rows:
        cid, idx = row["conversation_id"], row["turn_index"]
        speaker, text, extra = BY_KEY[(cid, idx)]
        assert (row["speaker"], row["text"], row["model"]) == (speaker, text, "random:tiny"), (cid, idx)
        assert row["seed"] == extra.get("seed", turn_seed(0, cid, idx)), (cid, idx)
        assert row["temperature"] == pytest.approx(extra.get("temperature", 0.9)), (cid, idx)
        assert row["top_k"] == extra.get("top_k", 50), (cid, idx)
        assert row["pause_ms"] == extra.get("pause_ms"), (cid, idx)
        max_frames = -(-extra.get("max_audio_length_ms", MAX_MS) // 80)
        assert row["end_reason"] in ("eos", "max_length"), (cid, idx)
        if row["end_reason"] == "max_length":
            assert row["num_frames"] == max_frames, (cid, idx)
        else:
            assert row["num_frames"] < max_frames, (cid, idx)
        # Every rendered turn was checked; running to the length limit is one of the failures the checks name.
        # Random weights fail every attempt: each turn was rendered 1 + --qc-retries (default 2) times.
        assert row["qc_status"] in ("pass", "fail"), (cid, idx)
        if row["qc_status"] == "fail":
            assert row["qc_attempts"] == 3 and 1 <= row["qc_attempt"] <= 3, (cid, idx)
        assert (row["qc_status"] == "fail") == bool(row["qc_failed"]), (cid, idx)
        assert ("max_length" in (row["qc_failed"] or "")) == (row["end_reason"] == "max_length"), (cid, idx)
    # Derived seeds differ from turn to turn (they are not all the job seed).
    assert len({r["seed"] for r in first.rows}) == len(first.rows)


def test_first_run_writes_job_record_and_no_temp_files(first):
    record = json.loads((first.out / layout.JOB_RECORD).read_text())
    fp = record["fingerprint"]
    assert fp["model"] == "random:tiny" and fp["audio_format"] == "wav"
    assert fp["defaults"]["max_audio_length_ms"] == MAX_MS
    assert tmp_files(first.out) == []
    commits = sorted(str(p.relative_to(first.out)) for p in (first.out / "commits").rglob("*.json"))
    assert commits == sorted(layout.commit_key(cid, idx) for cid, idx in RENDERED)


# --- re-running the same command ---------------------------------------------------------------------------------

def test_rerun_renders_nothing_and_touches_nothing(first, csm_render):
    out = copy_out(first, "out-rerun")
    before = snapshot(out, "audio", "codes", "commits", "metadata")
    result = csm_render(*first.command(out))
    ok(result)
    assert turns_rendered(result) == 0
    assert "4 already complete" in result.stdout
    assert snapshot(out, "audio", "codes", "commits", "metadata") == before
    assert tmp_files(out) == []


@pytest.fixture
def stale_ray_address():
    """/tmp/ray/ray_current_cluster naming a loopback port nothing listens on, as a killed `ray start` (or test
    cluster) leaves it; whatever was there before is put back."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    saved = path.read_text() if path.exists() else None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"127.0.0.1:{port}")
    yield
    if saved is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(saved)


def test_a_stale_ray_address_file_does_not_stall_a_local_run(first, csm_render, stale_ray_address):
    # Without --address the run starts a Ray of its own; Ray's default would instead retry the dead address.
    out = first.root / "out-stale-address"
    result = csm_render(*first.command(out), timeout=180)
    ok(result)
    assert turns_rendered(result) == len(RENDERED)


def test_an_out_another_run_holds_is_refused_and_left_alone(first, csm_render):
    # A live run's lease (this test's own process stands in for it): the run waits 0 s, exits 2, writes nothing.
    out = copy_out(first, "out-busy")
    lease = {"generation": 1, "run_id": "nightly", "host": socket.gethostname(), "pid": os.getpid(),
             "renewed_at": time.time()}
    (out / "locks").mkdir(exist_ok=True)
    (out / layout.lock_key(1)).write_text(json.dumps(lease))
    (out / layout.commit_key("station", 2)).unlink()  # work left that the refused run must not do
    before = snapshot(out, "")
    status = csm_render("status", out)
    assert "running: run nightly on" in status.stdout
    result = csm_render(*first.command(out, "--lock-wait-s", 0))
    assert result.returncode == 2, result.stderr
    assert "is in use by run nightly" in result.stderr
    assert snapshot(out, "") == before
    # A schedule's late or doubled run: --if-busy skip makes it a clean no-op (exit 0, nothing touched).
    skipped = csm_render(*first.command(out, "--lock-wait-s", 0, "--if-busy", "skip"))
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped (--if-busy skip)" in skipped.stdout and "is in use by run nightly" in skipped.stdout
    assert snapshot(out, "") == before


# --- other settings on the same OUT ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def new_run(first, csm_render, ray_address):
    """A copy of the first run's OUT, a refused re-run with another temperature, then --new-run (as FLAC)."""
    out = copy_out(first, "out-new-run")
    before = snapshot(out, "")
    refused = csm_render(*first.command(out, "--temperature", 0.5))
    after_refusal = snapshot(out, "")
    result = csm_render(*first.command(out, "--temperature", 0.5, "--new-run", "--format", "flac",
                                       "--address", ray_address))
    return out, before, refused, after_refusal, result


def test_other_temperature_is_refused_and_writes_nothing(new_run):
    out, before, refused, after_refusal, _ = new_run
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "temperature" in refused.stderr and "0.5" in refused.stderr and "0.9" in refused.stderr
    assert "--new-run" in refused.stderr
    assert after_refusal == before


def test_new_run_renders_every_turn_again_as_flac(new_run):
    out, _, _, _, result = new_run
    ok(result)
    assert turns_rendered(result) == len(RENDERED)
    rows = metadata_rows(out)
    assert sorted((r["conversation_id"], r["turn_index"]) for r in rows) == sorted(RENDERED)
    for row in rows:
        cid, idx = row["conversation_id"], row["turn_index"]
        assert row["audio_path"] == layout.audio_key(cid, idx, ".flac")
        audio_file = out / row["audio_path"]
        info = sf.info(str(audio_file))
        samples, rate = sf.read(str(audio_file), dtype="float32")
        assert (rate, info.channels, info.format) == (SAMPLE_RATE, 1, "FLAC"), (cid, idx)
        assert len(samples) == row["num_samples"] == row["num_frames"] * SAMPLES_PER_FRAME, (cid, idx)
        assert hashlib.sha256(audio_file.read_bytes()).hexdigest() == row["sha256"], (cid, idx)
        assert row["temperature"] == pytest.approx(BY_KEY[(cid, idx)][2].get("temperature", 0.5)), (cid, idx)
    fp = json.loads((out / layout.JOB_RECORD).read_text())["fingerprint"]
    assert fp["audio_format"] == "flac" and fp["defaults"]["temperature"] == 0.5
    assert tmp_files(out) == []


# --- bad input ---------------------------------------------------------------------------------------------------

def test_invalid_manifest_exits_2_and_writes_nothing(tmp_path, csm_render):
    manifest = write_manifest(tmp_path / "manifest", drop=("text",))
    out = tmp_path / "out"
    result = csm_render("run", manifest, "--out", out, *JOB_ARGS)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "column text" in result.stderr and "nothing was rendered or written" in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_an_out_that_cannot_be_written_exits_2_with_its_path(tmp_path, csm_render):
    """An OUT whose parent is a file (or a read-only folder): a clear error naming the path, no traceback."""
    manifest = write_manifest(tmp_path / "manifest")
    (tmp_path / "afile").write_text("not a folder")
    result = csm_render("run", manifest, "--out", tmp_path / "afile" / "out", *JOB_ARGS)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error:" in result.stderr and str(tmp_path / "afile") in result.stderr
    assert "Traceback" not in result.stderr


def test_changed_weights_under_the_same_model_are_refused_before_any_turn(tmp_path, csm_render):
    """A --model folder whose weights changed since the first run: exit 2 naming the mismatch, and not one turn
    rendered with the other weights is committed (the workers check before they take any work)."""
    import json
    import shutil

    from csm_worker.model import presets

    model = tmp_path / "model"
    shutil.copytree(presets.preset_dir("random:tiny"), model)
    args = ("--model", model, "--max-audio-length-ms", MAX_MS, "--batch-size", 2, "--watermark-weights", "random:silentcipher")
    out = tmp_path / "out"
    ok(csm_render("run", write_manifest(tmp_path / "m1", [r for r in ROWS if r[0] == "short"]), "--out", out, *args))
    before = sorted(p.relative_to(out) for p in (out / "commits").rglob("*.json"))
    config = model / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()), indent=1))  # other bytes: other weights hash

    result = csm_render("run", write_manifest(tmp_path / "m2"), "--out", out, *args)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "other weights" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.relative_to(out) for p in (out / "commits").rglob("*.json")) == before



def test_a_hub_layout_model_renders_and_a_broken_copy_stops_the_job_before_any_work(tmp_path, csm_render):
    """A --model folder laid out as the real sesame/csm-1b repo (tests/hub_layout.py) renders; the same folder
    with a tensor missing from a shard is refused by the worker (not random weights rendering noise): exit 2
    naming the key, no conversation failed or committed, no retries over every worker."""
    from safetensors.torch import load_file, save_file

    from csm_worker.model import presets
    from tests.hub_layout import SHARDS, write_hub_layout

    model = write_hub_layout(presets.preset_dir("random:tiny"), tmp_path / "sesame-csm-1b")
    args = ("--model", model, "--max-audio-length-ms", MAX_MS, "--batch-size", 2, "--watermark-weights", "random:silentcipher")
    manifest = write_manifest(tmp_path / "m", [r for r in ROWS if r[0] == "short"])
    ok(csm_render("run", manifest, "--out", tmp_path / "good", *args))

    key = "backbone_model.layers.0.mlp.up_proj.weight"
    tensors = load_file(model / SHARDS[0])
    del tensors[key]
    save_file(tensors, model / SHARDS[0], metadata={"format": "pt"})
    out = tmp_path / "out"
    result = csm_render("run", manifest, "--out", out, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"1 missing keys (first: {key})" in result.stderr and "Traceback" not in result.stderr.splitlines()[-1]
    assert not list(out.glob("failures/*")) and not list(out.glob("commits/**/*.json"))


# --- resuming a partly committed job -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resumed(first, csm_render, ray_address):
    """The first run's OUT with the last turn of "intro" (after a given voice prompt and two rendered turns)
    uncommitted: its commit record, audio and codes removed, and the conversation's metadata with them."""
    out = copy_out(first, "out-resume")
    cid, idx = "intro", 3
    for key in (layout.commit_key(cid, idx), layout.metadata_key(cid), layout.audio_key(cid, idx, ".wav"),
                layout.codes_key(cid, idx)):
        (out / key).unlink()
    kept = snapshot(out, "audio", "codes", "commits", "metadata")
    result = csm_render(*first.command(out, "--address", ray_address))
    return out, kept, result


def test_resume_renders_exactly_the_uncommitted_turn(first, resumed):
    out, kept, result = resumed
    ok(result)
    assert turns_rendered(result) == 1
    assert "3 already complete" in result.stdout
    # Nothing that was committed was written again.
    now = snapshot(out, "audio", "codes", "commits", "metadata")
    assert {k: now[k] for k in kept} == kept
    assert set(now) - set(kept) == {layout.commit_key("intro", 3), layout.metadata_key("intro"),
                                     layout.audio_key("intro", 3, ".wav"), layout.codes_key("intro", 3)}
    rows = metadata_rows(out)
    assert sorted((r["conversation_id"], r["turn_index"]) for r in rows) == sorted(RENDERED)
    assert tmp_files(out) == []


def test_resume_renders_the_turn_as_the_first_run_did(first, resumed):
    """Same seed, and the stored codes of turns 1-2 (after the given prompt) as context: the same codes."""
    out, _, _ = resumed
    np.testing.assert_array_equal(codes_of(out, "intro", 3), codes_of(first.out, "intro", 3))
    row = next(r for r in metadata_rows(out) if (r["conversation_id"], r["turn_index"]) == ("intro", 3))
    first_row = next(r for r in first.rows if (r["conversation_id"], r["turn_index"]) == ("intro", 3))
    for column in ("num_frames", "num_samples", "end_reason", "seed", "temperature", "top_k"):
        assert row[column] == first_row[column], column


# --- a failing conversation, through run_job -----------------------------------------------------------------------

def test_failing_conversation_is_recorded_then_resumed(tmp_path, ray_session):
    from jobs.manifests.manifest import ConversationSpec, TurnSpec
    from jobs.plan.order import Defaults
    from jobs.runner import RunConfig, run_job

    prompt = tmp_path / "late.wav"  # written only before the second run
    bad = ConversationSpec("bad", [TurnSpec("bad", 0, 0, "My voice.", audio=str(prompt)),
                                   TurnSpec("bad", 1, 1, "Reply.")])
    good = ConversationSpec("good", [TurnSpec("good", 0, 0, "One."), TurnSpec("good", 1, 1, "Two.")])
    out = tmp_path / "out"
    cfg = RunConfig(manifests=[], out=str(out), model="random:tiny", batch_size=2,
                    defaults=Defaults(max_audio_length_ms=240))

    summary = run_job(cfg, conversations=[bad, good])
    assert summary.exit_code == 1
    assert set(summary.failed) == {"bad"} and "late.wav" in summary.failed["bad"]
    assert summary.turns_rendered == 2
    record = json.loads((out / layout.failure_key("bad")).read_text())
    assert record["conversation_id"] == "bad"
    assert record["error_type"] == "AudioError" and "late.wav" in record["message"]
    assert record["turns_committed"] == 0
    rows = metadata_rows(out)
    assert sorted((r["conversation_id"], r["turn_index"]) for r in rows) == [("good", 0), ("good", 1)]
    assert not (out / layout.failure_key("good")).exists()
    assert not (out / "commits" / "bad").exists()

    t = np.arange(4800) / 24_000
    sf.write(prompt, 0.2 * np.sin(2 * np.pi * 200 * t), 24_000, subtype="PCM_16")
    summary = run_job(cfg, conversations=[bad, good])
    assert summary.exit_code == 0 and summary.failed == {}
    assert (summary.turns_rendered, summary.already_complete) == (1, 1)
    assert not (out / layout.failure_key("bad")).exists()
    rows = metadata_rows(out)
    assert sorted((r["conversation_id"], r["turn_index"]) for r in rows) == [("bad", 1), ("good", 0), ("good", 1)]
    assert (out / layout.audio_key("bad", 1, ".wav")).is_file()
    assert tmp_files(out) == []


def test_conversations_of_a_dead_worker_are_recorded(tmp_path, ray_session):
    from jobs.manifests.manifest import ConversationSpec, TurnSpec
    from jobs.plan.order import Defaults
    from jobs.runner import RunConfig, run_job

    out = tmp_path / "out"
    # run_job skips the driver-side model check when given conversations, so the worker's own load fails.
    cfg = RunConfig(manifests=[], out=str(out), model="random:no-such-preset", batch_size=2,
                    defaults=Defaults(max_audio_length_ms=240))
    summary = run_job(cfg, conversations=[ConversationSpec("lost", [TurnSpec("lost", 0, 0, "One.")])])
    assert summary.exit_code == 1 and set(summary.failed) == {"lost"}
    assert "no-such-preset" in summary.failed["lost"]
    record = json.loads((out / layout.failure_key("lost")).read_text())
    assert "no-such-preset" in record["message"]


def test_a_run_that_loses_its_lease_stops(tmp_path, ray_session, monkeypatch):
    # Another run takes OUT over (as one would after this run went unheard for the ttl): this run stops with
    # LeaseLost instead of rendering on beside it, and does not mark the new holder's record released.
    from jobs.storage import run_lock
    from jobs.manifests.manifest import ConversationSpec, TurnSpec
    from jobs.plan.order import Defaults
    from jobs.runner import RunConfig, run_job

    monkeypatch.setattr(run_lock, "RENEW_S", 0.1)
    out = tmp_path / "out"
    conversations = [ConversationSpec(f"c{i}", [TurnSpec(f"c{i}", t, t % 2, "Hello there.") for t in range(3)])
                     for i in range(4)]
    cfg = RunConfig(manifests=[], out=str(out), model="random:tiny", batch_size=2,
                    defaults=Defaults(max_audio_length_ms=400))

    def take_over():
        for _ in range(600):  # up to 60 s for the run to take its lease
            keys = sorted((out / "locks").glob("*.json")) if (out / "locks").exists() else []
            if keys:
                newer = {"generation": 2, "run_id": "usurper", "host": "elsewhere", "pid": 1,
                         "renewed_at": time.time() + 3600}  # fresh for the whole test
                (out / layout.lock_key(2)).write_text(json.dumps(newer))
                return
            time.sleep(0.1)

    thief = threading.Thread(target=take_over)
    thief.start()
    with pytest.raises(run_lock.LeaseLost, match="taken over by run usurper"):
        run_job(cfg, conversations=conversations)
    thief.join()
    assert json.loads((out / layout.lock_key(2)).read_text())["run_id"] == "usurper"
    assert not json.loads((out / layout.lock_key(1)).read_text()).get("released")


def test_a_run_that_loses_its_queue_stops_and_a_rerun_renders_each_turn_once(tmp_path, ray_session, monkeypatch):
    # The queue actor is killed (as when its process or node is lost) once the first turn is committed: the run
    # stops with FeederLost, stops its workers, records no conversation as failed, and the re-run renders
    # exactly the turns that were not committed.
    from jobs.cluster.driver import Driver
    from jobs.cluster.feeder import FeederLost
    from jobs.manifests.manifest import ConversationSpec, TurnSpec
    from jobs.plan.order import Defaults
    from jobs.runner import RunConfig, run_job

    conversations = [ConversationSpec(f"c{i}", [TurnSpec(f"c{i}", t, t % 2, "Hello there.") for t in range(4)])
                     for i in range(4)]
    out = tmp_path / "out"
    cfg = RunConfig(manifests=[], out=str(out), model="random:tiny", batch_size=2,
                    defaults=Defaults(max_audio_length_ms=400))
    original, killed = Driver._next, []

    def kill_the_queue_after_a_turn(self, stream):
        original(self, stream)
        if self.summary.turns_rendered and not killed:
            killed.append(self.summary.turns_rendered)
            ray_session.kill(self.feeder, no_restart=True)

    monkeypatch.setattr(Driver, "_next", kill_the_queue_after_a_turn)
    with pytest.raises(FeederLost, match="work queue .* was lost .* run the same command again to resume"):
        run_job(cfg, conversations=conversations)
    assert killed
    assert not (out / "failures").exists() or not list((out / "failures").iterdir())
    committed = {p for p in (out / "commits").rglob("*.json") if not p.name.startswith(TMP_PREFIX)}
    assert 0 < len(committed) < 16

    monkeypatch.setattr(Driver, "_next", original)
    summary = run_job(cfg, conversations=conversations)
    assert summary.exit_code == 0 and summary.failed == {}
    assert summary.turns_rendered == 16 - len(committed)
    keys = [(r["conversation_id"], r["turn_index"]) for r in metadata_rows(out)]
    assert sorted(keys) == sorted((f"c{i}", t) for i in range(4) for t in range(4))
    assert tmp_files(out) == []


def test_a_lost_queue_is_one_line_and_the_resume_exit_code(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import jobs.runner
    from jobs.cli import EXIT_RESUME, main
    from jobs.cluster.feeder import FeederLost

    def lose(cfg):
        raise FeederLost("the job's work queue was lost (ActorDiedError); run the same command again to resume")

    monkeypatch.setattr(jobs.runner, "run_job", lose)
    manifest = write_manifest(tmp_path / "manifest")
    result = CliRunner().invoke(main, ["run", str(manifest), "--out", str(tmp_path / "out"), *map(str, JOB_ARGS)])
    assert result.exit_code == EXIT_RESUME == 75
    assert result.stderr.strip().splitlines() == [
        "error: the job's work queue was lost (ActorDiedError); run the same command again to resume"]
