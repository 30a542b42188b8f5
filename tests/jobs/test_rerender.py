"""`csm-render run --rerender-failed` as a user types it: a finished job's failed turns, and the turns after them
in their conversations, are rendered again as pass 2, with new seeds, into new files beside the first pass's; the
metadata then holds each turn once, from its latest pass. A pass killed midway is resumed by a plain re-run and ends
exactly as an uninterrupted one.

Injected faults (tests/jobs/qc_faults.py) make the failures: "qc-silent" turn 1 is silent in the first pass only (bad
luck, which a new seed cures), "qc-always" turn 0 in every pass; "clean" never fails. --qc-retries 0, so the first
pass keeps them flagged."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from jobs.plan.order import turn_seed
from jobs.plan.passes import pass_seed
from jobs.storage import layout

from .qc_faults import hook_env
from .test_crash_resume import _wait_for, cli_command, kill_run, metadata_rows, read_local_out, temp_names
from .test_crash_resume import write_manifest as write_rows

pytestmark = pytest.mark.slow

JOB_SEED = 3
JOB_ARGS = ("--model", "random:tiny", "--max-audio-length-ms", 2000, "--batch-size", 2, "--seed", JOB_SEED,
            "--qc-retries", 0, "--watermark", "off")
TEXTS = ("Good morning to you.", "Did you sleep at all?", "Not much, it was loud.")
CONVERSATIONS = {"qc-silent": 3, "qc-always": 2, "clean": 2}
ROWS = [(cid, t, t % 2, TEXTS[t]) for cid, n in CONVERSATIONS.items() for t in range(n)]
RENDERED_AGAIN = {("qc-silent", 1), ("qc-silent", 2), ("qc-always", 0), ("qc-always", 1)}


def run_cli(root, env, *args, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run(cli_command(*args), cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args[0]}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def job(tmp_path_factory, csm_cache):
    root = tmp_path_factory.mktemp("rerender")
    manifest = write_rows(root / "dialogue.parquet", ROWS)
    env = hook_env(root / "hook", CSM_TEST_QC_FAULTS="1", CSM_TEST_QC_TRANSIENT_SEED=str(JOB_SEED))
    run_cli(root, env, "run", manifest, "--out", root / "first", *JOB_ARGS)
    first = read_local_out(root / "first")

    shutil.copytree(root / "first", root / "second")
    again = run_cli(root, env, "run", manifest, "--out", root / "second", *JOB_ARGS, "--rerender-failed")
    status = run_cli(root, env, "status", root / "second", timeout=120)
    return {"root": root, "manifest": manifest, "env": env, "first": first, "second": read_local_out(root / "second"),
            "stdout": again.stdout, "status": status.stdout}


def rows_of(files) -> dict[tuple[str, int], dict]:
    return {(r["conversation_id"], r["turn_index"]): r for r in metadata_rows(files)}


def check_passed_out(files: dict[str, bytes], first: dict[str, bytes]) -> dict:
    """Every turn once in the metadata, from its latest pass, whole; the first pass's files all still there."""
    assert temp_names(files) == []
    rows = rows_of(files)
    assert len(metadata_rows(files)) == len(rows) == len(ROWS)
    for key, row in rows.items():
        render_pass = 2 if key in RENDERED_AGAIN else 1
        assert row["render_pass"] == render_pass, key
        assert row["audio_path"] == layout.audio_key(*key, ".wav", render_pass), key
        assert row["codes_path"] == layout.codes_key(*key, render_pass), key
        assert json.loads(files[layout.commit_key(*key, render_pass)]) == row, key
        assert hashlib.sha256(files[row["audio_path"]]).hexdigest() == row["sha256"], key
        assert row["seed"] == pass_seed(turn_seed(JOB_SEED, *key), render_pass), key
    for key, data in first.items():  # nothing of the first pass is replaced (the metadata files are rewritten)
        if not key.startswith(("metadata/", "locks/", "job.json")):
            assert files[key] == data, key
    return rows


def test_the_failed_turns_and_those_after_them_are_rendered_again(job):
    first, rows = rows_of(job["first"]), check_passed_out(job["second"], job["first"])
    assert {k for k, r in first.items() if r["qc_status"] == "fail"} == {("qc-silent", 1), ("qc-always", 0)}
    assert rows[("qc-silent", 1)]["qc_status"] == "pass"  # its new seed renders it cleanly
    assert rows[("qc-always", 0)]["qc_status"] == "fail"  # still broken: flagged again
    for key in ("qc-silent", 0), ("clean", 0), ("clean", 1):
        assert rows[key] == first[key], key  # untouched: same row, same file
    codes = lambda files, row: np.load(io.BytesIO(files[row["codes_path"]]))
    for key in RENDERED_AGAIN:
        assert not np.array_equal(codes(job["second"], rows[key]), codes(job["first"], first[key])), key


def test_the_pass_is_recorded_and_reported(job):
    files = job["second"]
    plan = json.loads(files[layout.pass_key(2)])
    assert plan["reason"] == "rerender-failed"
    assert plan["conversations"] == {"qc-silent": {"turns": [1, 2], "failed": {"1": "mostly_silence"}},
                                     "qc-always": {"turns": [0, 1], "failed": {"0": "mostly_silence"}}}
    assert json.loads(files[layout.pass_done_key(2)])["pass"] == 2
    assert "re-render pass 2: 2 conversations from their first failed turn (2 failed turns, 4 turns to render " \
           "again)" in job["stdout"]
    assert "re-render pass 2: done" in job["stdout"]
    assert "turns rendered: 4," in job["stdout"]
    lines = job["status"].splitlines()
    assert any(line.startswith("re-render pass 2:") and line.endswith(": done") for line in lines)
    assert "turns: 7 done, ? pending" in lines
    assert [line for line in lines if line.startswith("QC ")] == ["QC qc-always/0: mostly_silence"]


def test_a_killed_pass_is_resumed_by_a_plain_run(job):
    """Killed after the pass's first commit, the job resumes the open pass without the flag and ends as the
    uninterrupted pass did: the same codes for every turn, nothing rendered twice."""
    root, env = job["root"], job["env"]
    out = root / "killed"
    shutil.copytree(root / "first", out)
    command = cli_command("run", job["manifest"], "--out", out, *JOB_ARGS, "--rerender-failed")
    proc = subprocess.Popen(command, cwd=root, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    later = lambda: any(p.name.endswith(".p2.json") and not p.name.startswith(".") for p in out.rglob("*.json"))
    _wait_for(proc, later, "the pass's first commit")
    kill_run(proc)
    at_crash = read_local_out(out)
    for key in (k for k in at_crash if layout.parse_commit(k) and not temp_names([k])):
        record = json.loads(at_crash[key])  # every record, of either pass, has its files, whole
        assert hashlib.sha256(at_crash[record["audio_path"]]).hexdigest() == record["sha256"], key
        assert record["codes_path"] in at_crash, key
    for key in (k for k in at_crash if k.startswith("metadata/") and not temp_names([k])):
        turns = [r["turn_index"] for r in pq.read_table(io.BytesIO(at_crash[key])).to_pylist()]
        assert turns == list(range(CONVERSATIONS[key[len("metadata/"):-len(".parquet")]])), key  # whole, once
    assert layout.pass_done_key(2) not in at_crash

    resumed = run_cli(root, env, "run", job["manifest"], "--out", out, *JOB_ARGS)  # no flag
    assert "resuming re-render pass 2" in resumed.stdout and "re-render pass 2: done" in resumed.stdout
    committed_before = sum(1 for k in at_crash if k.startswith("commits/") and ".p2." in k and not temp_names([k]))
    assert f"turns rendered: {len(RENDERED_AGAIN) - committed_before}," in resumed.stdout
    files = read_local_out(out)
    rows, reference = check_passed_out(files, job["first"]), rows_of(job["second"])
    for key in RENDERED_AGAIN:
        assert files[rows[key]["codes_path"]] == job["second"][reference[key]["codes_path"]], key


def test_the_flag_without_failures_renders_nothing(job, tmp_path):
    out = tmp_path / "clean"
    manifest = write_rows(tmp_path / "clean.parquet", [r for r in ROWS if r[0] == "clean"])
    run_cli(job["root"], job["env"], "run", manifest, "--out", out, *JOB_ARGS)
    again = run_cli(job["root"], job["env"], "run", manifest, "--out", out, *JOB_ARGS, "--rerender-failed")
    assert "nothing to render again" in again.stdout and "turns rendered: 0," in again.stdout
    assert not (out / "passes").exists() or not any((out / "passes").iterdir())


def test_rerender_and_new_run_are_refused_together(job, tmp_path):
    result = subprocess.run(cli_command("run", job["manifest"], "--out", tmp_path / "o", *JOB_ARGS,
                                        "--rerender-failed", "--new-run"),
                            cwd=job["root"], env=job["env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "choose one" in result.stderr
    assert not (tmp_path / "o").exists()
