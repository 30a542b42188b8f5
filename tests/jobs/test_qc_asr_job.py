"""`--qc-asr MODEL` through the CLI as a user types it: the workers load the recognizer (here a tiny random CTC model
saved in the hub format, tests/csm_worker/quality/asr_models.py) and every turn's transcript and error rates land in
the metadata; `csm-render qc OUT --qc-asr` adds them to a job rendered without; a recognizer that is not there is
refused before anything is written. The recognizer hears nothing (random weights), so every turn fails "asr"."""

from __future__ import annotations

import pytest

from tests.csm_worker.quality.asr_models import tiny_ctc

from .test_crash_resume import metadata_rows, read_local_out
from .test_crash_resume import write_manifest as write_rows

pytestmark = pytest.mark.slow

JOB_ARGS = ("--model", "random:tiny", "--max-audio-length-ms", 1000, "--batch-size", 2, "--seed", 1,
            "--qc-retries", 0)
ROWS = [("asr-a", 0, 0, "Good morning to you."), ("asr-a", 1, 1, "Did you sleep at all?"),
        ("asr-b", 0, 0, "Not much, it was loud.")]


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    return tiny_ctc(tmp_path_factory.mktemp("asr") / "tiny-ctc")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("asr-manifest") / "dialogue.parquet", ROWS)


def asr_columns(out) -> dict[tuple[str, int], dict]:
    rows = metadata_rows(read_local_out(out))
    return {(r["conversation_id"], r["turn_index"]): r for r in rows}


def test_run_with_asr_records_every_turns_transcript_and_fails_what_it_cannot_hear(tmp_path, manifest, recognizer,
                                                                                    csm_render):
    out = tmp_path / "out"
    result = csm_render("run", manifest, "--out", out, *JOB_ARGS, "--qc-asr", recognizer)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = asr_columns(out)
    assert set(rows) == {(c, t) for c, t, _, _ in ROWS}
    for row in rows.values():
        assert isinstance(row["qc_transcript"], str)
        assert row["qc_cer"] is not None and row["qc_cer"] > 0.2 and row["qc_wer"] is not None
        assert row["qc_status"] == "fail" and "asr" in row["qc_failed"].split(",")


def test_qc_adds_the_asr_check_to_a_job_rendered_without_it(tmp_path, manifest, recognizer, csm_render):
    out = tmp_path / "out"
    result = csm_render("run", manifest, "--out", out, *JOB_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(r["qc_cer"] is None and r["qc_transcript"] is None for r in asr_columns(out).values())

    checked = csm_render("qc", out, "--qc-asr", recognizer)
    assert checked.returncode == 1, checked.stdout + checked.stderr  # every turn fails: exit 1, as for the checks
    for row in asr_columns(out).values():
        assert row["qc_cer"] is not None and isinstance(row["qc_transcript"], str)
        assert "asr" in row["qc_failed"].split(",")

    # A higher limit than any CER the random recognizer can reach: the ASR check passes, the turns' other
    # results stay as the first qc found them.
    relaxed = csm_render("qc", out, "--qc-asr", recognizer, "--qc-max-cer", 100)
    assert all("asr" not in (r["qc_failed"] or "").split(",") for r in asr_columns(out).values()), relaxed.stdout


@pytest.mark.parametrize("make", ["missing", "no_config"])
def test_a_recognizer_that_is_not_there_is_refused_before_anything_is_written(tmp_path, manifest, csm_render, make):
    folder = tmp_path / "recognizer"
    if make == "no_config":
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
    for command in (("run", manifest, "--out", tmp_path / "out", *JOB_ARGS), ("qc", tmp_path / "out")):
        result = csm_render(*command, "--qc-asr", folder)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "--qc-asr" in result.stderr and str(folder) in result.stderr
        assert not (tmp_path / "out").exists()
