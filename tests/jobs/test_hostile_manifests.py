"""A corpus of hostile manifests, each run through the CLI as a user types it (`csm-render validate`, then
`csm-render run`, in a subprocess from the manifest's folder): each must exit 2 with one problem line naming its
file and the words its message must hold, no traceback, and nothing written anywhere (no OUT, no new or changed
file in the folder).

The corpus keeps what an adversarial run of about 100 such manifests found (a negative turn index as a
conversation's only row, NaN or infinite samples in a given recording, ids that differ only in case, a
40,000-word turn) beside classic ones that must stay refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

pytestmark = pytest.mark.slow


def rows(ids, turns, speakers=None, texts=None, **extra) -> dict:
    speakers = speakers if speakers is not None else [i % 2 for i in range(len(ids))]
    texts = texts if texts is not None else [f"Turn {i}." for i in range(len(ids))]
    return {"conversation_id": ids, "turn_index": turns, "speaker": speakers, "text": texts, **extra}


def float_wav(path: Path, bad: float) -> None:
    samples = np.full(24_000, 0.1, dtype=np.float32)
    samples[12_345] = bad
    soundfile.write(path, samples, 24_000, subtype="FLOAT")


def parquet(columns: dict):
    return lambda folder: pq.write_table(pa.table(columns), folder / "m.parquet")


def with_audio(bad: float, columns: dict):
    def write(folder: Path) -> None:
        float_wav(folder / "voice.wav", bad)
        parquet(columns)(folder)
    return write


# name -> (writes the manifest m.parquet into a folder, the words its problem line must hold)
CORPUS = {
    "negative-only-turn": (parquet(rows(["c1"], [-1])), ["row c1/-1", "turn_index -1 is out of range"]),
    "nan-voice": (with_audio(np.nan, rows(["c1", "c1"], [0, 1], audio=["voice.wav", None])),
                  ["row c1/0", "column audio", "contains NaN or infinite samples"]),
    "inf-voice": (with_audio(np.inf, rows(["c1", "c1"], [0, 1], audio=["voice.wav", None])),
                  ["column audio", "contains NaN or infinite samples"]),
    "ids-differ-in-case": (parquet(rows(["Conv", "conv"], [0, 0])),
                           ["row 1", "column conversation_id", "'conv' differs only in case from 'Conv'"]),
    "40000-words": (parquet(rows(["c1"], [0], texts=["word " * 40_000])),
                    ["row c1/0", "column text", "text too long to fit the model's window"]),
    "path-id": (parquet(rows([".."], [0])), ["column conversation_id", "it would be a path"]),
    "slash-id": (parquet(rows(["a/b"], [0])), ["column conversation_id", "contains '/'"]),
    "duplicate-turn": (parquet(rows(["c1", "c1"], [0, 0])), ["duplicate turn_index 0"]),
    "gap": (parquet(rows(["c1", "c1"], [0, 2])), ["conversation c1", "missing 1"]),
    "no-text-column": (parquet({k: v for k, v in rows(["c1"], [0]).items() if k != "text"}),
                       ["missing required column text"]),
    "nan-temperature": (parquet(rows(["c1"], [0], temperature=[float("nan")])), ["column temperature"]),
    "missing-voice": (parquet(rows(["c1", "c1"], [0, 1], audio=["nope.wav", None])), ["audio file not found"]),
    "http-voice": (parquet(rows(["c1", "c1"], [0, 1], audio=["http://example.invalid/v.wav", None])),
                   ["scheme 'http' is not supported"]),
    "not-parquet": (lambda folder: (folder / "m.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4),
                    ["cannot read as Parquet"]),
}


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", CORPUS)
def test_a_hostile_manifest_is_refused_by_name_and_nothing_is_written(name, tmp_path, csm_render):
    write, words = CORPUS[name]
    folder = tmp_path / name
    folder.mkdir()
    write(folder)
    before = tree(folder)
    for command in (["validate", "m.parquet"], ["run", "m.parquet", "--out", "out"]):
        result = csm_render(*command, "--model", "random:tiny", cwd=folder, timeout=180)
        problems = [line for line in result.stderr.splitlines() if line.startswith("m.parquet: ")]  # as typed
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert len(problems) == 1, result.stderr
        assert all(word in problems[0] for word in words), (words, problems[0])
        assert "nothing was rendered or written" in result.stderr
        assert tree(folder) == before, f"{command[0]} wrote into {folder}"
    assert not (folder / "out").exists()
