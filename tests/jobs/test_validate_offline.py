"""`csm-render validate` on a machine without hub access and without --model: the structural checks always run
(real subprocesses with HF_HUB_OFFLINE=1 and an empty hub cache, as a new user's machine has); `run` still needs
the model and says so, after the manifest's own problems."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
SKIPPED = "window-length check skipped: the tokenizer of sesame/csm-1b is not available"


@pytest.fixture
def offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)

    return run


def bad_manifest(tmp_path) -> Path:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"conversation_id": ["c1", "c1"], "turn_index": [0, 2], "speaker": [0, -1],
                             "text": ["Hello.", "Bye."]}), path)
    return path


def test_a_valid_manifest_validates_offline_with_a_notice(offline):
    result = offline("validate", EXAMPLES)
    assert result.returncode == 0, result.stderr
    assert "4 conversations" in result.stdout and SKIPPED in result.stdout
    assert "--model" in result.stdout  # how to enable the skipped check


def test_a_bad_manifest_shows_its_problems_offline(offline, tmp_path):
    path = bad_manifest(tmp_path)
    result = offline("validate", path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"{path}: row c1/2: column speaker: speaker -1 is out of range" in result.stderr
    assert any("turn indices must be 0..n-1 without gaps: missing 1" in line for line in lines)
    assert "cannot download" not in result.stderr


def test_run_offline_names_the_manifest_problems_first(offline, tmp_path):
    result = offline("run", bad_manifest(tmp_path), "--out", tmp_path / "out")
    assert result.returncode == 2 and "speaker -1 is out of range" in result.stderr
    assert not (tmp_path / "out").exists()


def test_run_offline_needs_the_model_and_says_so(offline, tmp_path):
    result = offline("run", EXAMPLES, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "cannot download sesame/csm-1b" in result.stderr and "local folder" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_turn_whose_words_alone_overflow_the_window_is_refused_offline(offline, tmp_path):
    # Without the tokenizer, each whitespace-separated word still counts as at least one position.
    path = tmp_path / "long.parquet"
    pq.write_table(pa.table({"conversation_id": ["c1", "c1"], "turn_index": [0, 1], "speaker": [0, 1],
                             "text": ["word " * 40_000, "Bye."]}), path)
    result = offline("validate", path)
    assert result.returncode == 2, result.stdout
    assert (f"{path}: row c1/0: column text: text too long to fit the model's window (at least 40002 positions"
            in result.stderr)
