"""The quality gate through `csm-render run` as a user types it: injected failures (tests/jobs/qc_faults.py) of
each kind are caught by the real checks, re-rendered by the real engine before the next turn hears them, and the
passing attempt is what OUT holds; metadata and `status` say so. A reference run with --qc-retries 0 renders every
turn once: its codes are the first attempts'."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from csm_worker.quality.checks import check_turn

from .qc_faults import hook_env
from .test_crash_resume import check_complete_out, cli_command, codes_in, metadata_rows, read_local_out
from .test_crash_resume import write_manifest as write_rows

pytestmark = pytest.mark.slow

JOB_ARGS = ("--model", "random:tiny", "--max-audio-length-ms", 2000, "--batch-size", 2, "--seed", 3)
TEXTS = ("Good morning to you.", "Did you sleep at all?", "Not much, it was loud.")
# The faults hit turn 1 of their conversation on its first attempt (turn 0 of "qc-always", on every attempt).
CONVERSATIONS = {"qc-silent": 3, "qc-half": 3, "qc-maxlen": 2, "qc-always": 2, "clean": 2}
ROWS = [(cid, t, t % 2, TEXTS[t]) for cid, n in CONVERSATIONS.items() for t in range(n)]
EXPECTED = {(cid, idx) for cid, idx, _, _ in ROWS}
FAULTED = {("qc-silent", 1): "mostly_silence", ("qc-half", 1): "too_fast", ("qc-maxlen", 1): "max_length",
           ("qc-always", 0): "mostly_silence"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, csm_cache):
    import subprocess

    root = tmp_path_factory.mktemp("quality-gate")
    manifest = write_rows(root / "dialogue.parquet", ROWS)
    env = hook_env(root / "hook", CSM_TEST_QC_FAULTS="1")
    done = {}
    for name, extra in (("gated", ()), ("reference", ("--qc-retries", 0))):
        out = root / name
        result = subprocess.run(cli_command("run", manifest, "--out", out, *JOB_ARGS, *extra), cwd=root, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{name}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        status = subprocess.run(cli_command("status", out), cwd=root, env=env, capture_output=True, text=True,
                                timeout=120)
        assert status.returncode == 0, status.stderr
        files = read_local_out(out)
        # Every turn once, whole; the reference's half-cut turn is shorter than its codes, so it is read plainly.
        rows = check_complete_out(files, EXPECTED) if name == "gated" else \
            {(r["conversation_id"], r["turn_index"]): r for r in metadata_rows(files)}
        done[name] = {"files": files, "rows": rows, "codes": codes_in(files), "status": status.stdout}
    return done


def test_each_injected_failure_is_caught(runs):
    """Rendered once (--qc-retries 0), every faulted turn is committed flagged with the check its fault fails."""
    rows = runs["reference"]["rows"]
    for key, check in FAULTED.items():
        row = rows[key]
        assert row["qc_status"] == "fail" and check in row["qc_failed"].split(","), (key, row["qc_failed"])
        assert (row["qc_attempt"], row["qc_attempts"]) == (1, 1), key
    assert all(rows[k]["qc_status"] == "pass" for k in EXPECTED - set(FAULTED))


def test_a_caught_turn_is_committed_as_its_passing_re_render(runs):
    gated, reference = runs["gated"], runs["reference"]
    for key in set(FAULTED) - {("qc-always", 0)}:
        row = gated["rows"][key]
        assert (row["qc_status"], row["qc_failed"], row["qc_attempt"], row["qc_attempts"]) == ("pass", None, 2, 2)
        assert not np.array_equal(gated["codes"][key], reference["codes"][key]), f"{key}: the first attempt kept"
        samples, rate = sf.read(io.BytesIO(gated["files"][row["audio_path"]]), dtype="float32")
        assert check_turn(samples, rate, row["text"], row["end_reason"]).passed, key  # the file itself passes


def test_the_turn_after_a_re_render_heard_the_re_render(runs):
    """Turns before the fault are the reference's; the turn after it differs (its context is the new attempt),
    and a conversation with no fault is the reference's throughout."""
    gated, reference = runs["gated"]["codes"], runs["reference"]["codes"]
    for cid in ("qc-silent", "qc-half"):
        np.testing.assert_array_equal(gated[(cid, 0)], reference[(cid, 0)])
        assert not np.array_equal(gated[(cid, 2)], reference[(cid, 2)]), cid
    for key in [("clean", 0), ("clean", 1), ("qc-maxlen", 0)]:
        np.testing.assert_array_equal(gated[key], reference[key])
        assert runs["gated"]["rows"][key]["qc_attempts"] == 1


def test_a_turn_that_never_passes_keeps_its_least_bad_attempt_flagged(runs):
    """Every attempt of qc-always/0 is equally silent: the earliest is kept, after 1 + --qc-retries attempts."""
    row = runs["gated"]["rows"][("qc-always", 0)]
    assert (row["qc_status"], row["qc_attempt"], row["qc_attempts"]) == ("fail", 1, 3)
    np.testing.assert_array_equal(runs["gated"]["codes"][("qc-always", 0)],
                                  runs["reference"]["codes"][("qc-always", 0)])


def test_status_counts_the_re_renders_and_the_flagged_turns(runs):
    lines = runs["gated"]["status"].splitlines()
    assert "re-rendered: 4 turns failed a first attempt; 3 of them passed on a later one" in lines
    assert (f"quality: 1 of {len(EXPECTED)} turns failed the checks "
            "(`run --rerender-failed` renders them again); the worst:") in lines
    assert [line for line in lines if line.startswith("QC ")] == ["QC qc-always/0: mostly_silence"]
    reference = runs["reference"]["status"].splitlines()
    assert (f"quality: 4 of {len(EXPECTED)} turns failed the checks "
            "(`run --rerender-failed` renders them again); the worst:") in reference
    assert not any(line.startswith("re-rendered:") for line in reference)


def test_a_bad_threshold_is_refused_before_anything_is_written(tmp_path, csm_render):
    manifest = write_rows(tmp_path / "dialogue.parquet", ROWS)
    for bad, words in (("rate_maks=3", "rate_max"), ("rate_max=fast", "not a number"), ("rate_max=nan", ">= 0"),
                       ("min_letters=2.5", "whole number")):
        result = csm_render("run", manifest, "--out", tmp_path / "out", *JOB_ARGS, "--qc-threshold", bad)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "out").exists()
