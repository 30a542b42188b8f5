"""Crash and resume: SIGKILL `csm-render run` (driver, its local Ray and the render worker) at seeded moments,
re-run the same command, and check the promise: every turn of the manifest is in OUT exactly once, nothing is
half written, and nothing committed before the crash is rendered or written again.

Each trial has its own OUT: run, kill, look at what the crash left, `csm-render status`, re-run to completion, check.
The trials are independent, so their final outputs must be identical (renders are deterministic for a seed).
One trial slows every rename of a temp file into place (a `sitecustomize` on the killed run's PYTHONPATH, timing
only) so that its kill lands in the middle of a write, which an unslowed kill would hit only by luck.

Also here: manifests whose conversation_id would be a path are refused before anything is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from jobs.storage import layout
from jobs.storage import TMP_PREFIX

from .qc_faults import hook_env

pytestmark = pytest.mark.slow

SAMPLE_RATE = 24_000
SAMPLES_PER_FRAME = 1920
JOB_SEED = 7
JOB_ARGS = ("--model", "random:tiny", "--max-audio-length-ms", 480, "--batch-size", 2, "--seed", JOB_SEED)
TEXTS = ("Good morning, everyone.", "Morning! Did you sleep well?", "Not really, the train was loud.",
         "Let us get some coffee then.")
# 6 conversations of 3 or 4 turns, speakers alternating: 21 turns to render, no given turns.
ROWS = [(f"conv-{c}", t, t % 2, TEXTS[t]) for c in range(6) for t in range(3 + c % 2)]
EXPECTED = {(cid, idx) for cid, idx, _, _ in ROWS}
CONVERSATION_TURNS = {cid: {idx for c, idx, _, _ in ROWS if c == cid} for cid, _, _, _ in ROWS}

_RNG = random.Random(20261125)


@dataclass(frozen=True)
class Trial:
    name: str
    # "job-record": after job.json appears (before any commit); "commit": after the first commit record appears;
    # "temp-file": after the first commit, once a write is in flight (a temp file exists); "retry": after the first
    # commit, once a turn that failed the quality checks is being rendered again
    trigger: str
    delay_s: float  # seconds from the trigger to the kill (drawn from the seeded RNG above)
    slow_rename_s: float = 0.0  # > 0: every temp-file rename of the killed run sleeps this long first
    slow_retry_s: float = 0.0  # > 0: every re-render of the killed run marks a file, then sleeps this long first


TRIALS = [
    Trial("before-first-commit", "job-record", round(_RNG.uniform(0.2, 1.5), 3)),
    Trial("after-commit-a", "commit", round(_RNG.uniform(0.0, 1.5), 3)),
    Trial("after-commit-b", "commit", round(_RNG.uniform(0.0, 1.5), 3)),
    # The delay stays well inside the slowed rename, so the kill lands while that temp file exists.
    Trial("mid-write", "temp-file", round(_RNG.uniform(0.0, 0.1), 3), slow_rename_s=0.3),
    # Random weights fail the quality checks on every turn, so each turn is rendered 1 + 2 times: this kill lands
    # inside one of those re-renders (tests/jobs/qc_faults.py), which nothing committed yet.
    Trial("mid-retry", "retry", round(_RNG.uniform(0.0, 0.2), 3), slow_retry_s=0.4),
]


# --- reading an OUT (shared with test_s3_job: `files` is key -> bytes, from a folder or a bucket) -----------------

def write_manifest(path: Path, rows=ROWS) -> Path:
    """One Parquet manifest, rows in reverse order (the loader must sort turns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(reversed(rows))
    pq.write_table(pa.table({
        "conversation_id": pa.array([r[0] for r in rows], pa.string()),
        "turn_index": pa.array([r[1] for r in rows], pa.int32()),
        "speaker": pa.array([r[2] for r in rows], pa.int32()),
        "text": pa.array([r[3] for r in rows], pa.string()),
    }), path)
    return path


def read_local_out(out: Path) -> dict[str, bytes]:
    """Every file under OUT (temp files included), by key."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def temp_names(keys) -> list[str]:
    return sorted(k for k in keys if any(seg.startswith(TMP_PREFIX) for seg in k.split("/")))


def metadata_rows(files: dict[str, bytes]) -> list[dict]:
    rows = []
    for key in sorted(files):
        if key.startswith("metadata/") and key.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(files[key])).to_pylist()
    return rows


def commits_in(files: dict[str, bytes]) -> set[tuple[str, int]]:
    return {parsed for parsed in map(layout.parse_commit_key, files) if parsed}


def codes_in(files: dict[str, bytes]) -> dict[tuple[str, int], np.ndarray]:
    codes = {}
    for cid, idx in commits_in(files):
        codes[(cid, idx)] = np.load(io.BytesIO(files[layout.codes_key(cid, idx)]), allow_pickle=False)
    return codes


def check_complete_out(files: dict[str, bytes], expected: set[tuple[str, int]] = EXPECTED) -> dict:
    """Assert that a finished job's OUT holds every expected turn exactly once, whole and consistent; returns the
    metadata rows by (conversation_id, turn_index)."""
    assert temp_names(files) == [], "temp files left in OUT"
    assert layout.JOB_RECORD in files
    rows = metadata_rows(files)
    keys = [(r["conversation_id"], r["turn_index"]) for r in rows]
    assert len(keys) == len(set(keys)), f"duplicate metadata rows: {sorted(keys)}"
    assert set(keys) == expected, f"missing {sorted(expected - set(keys))}, extra {sorted(set(keys) - expected)}"
    assert sorted(k for k in files if k.startswith("metadata/")) == sorted(
        layout.metadata_key(cid) for cid in {c for c, _ in expected})
    assert commits_in(files) == expected
    assert sorted(k for k in files if k.startswith("commits/")) == sorted(layout.commit_key(*k) for k in expected)
    assert sorted(k for k in files if k.startswith("codes/")) == sorted(layout.codes_key(*k) for k in expected)
    assert sorted(k for k in files if k.startswith("audio/")) == sorted(r["audio_path"] for r in rows)
    assert not any(k.startswith("failures/") for k in files), "a failure record is left in OUT"
    for row in rows:
        cid, idx = row["conversation_id"], row["turn_index"]
        where = f"{cid}/{idx}"
        assert row["audio_path"] == layout.audio_key(cid, idx, ".wav"), where
        assert row["codes_path"] == layout.codes_key(cid, idx), where
        data = files[row["audio_path"]]
        assert hashlib.sha256(data).hexdigest() == row["sha256"], where
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        assert rate == row["sample_rate"] == SAMPLE_RATE and samples.shape[1] == 1, where
        assert samples.shape[0] == row["num_samples"] == row["num_frames"] * SAMPLES_PER_FRAME, where
        codes = np.load(io.BytesIO(files[row["codes_path"]]), allow_pickle=False)
        assert codes.shape == (32, row["num_frames"]), where
        commit = json.loads(files[layout.commit_key(cid, idx)])
        assert commit == row, f"{where}: the commit record and the metadata row differ"
    return {(r["conversation_id"], r["turn_index"]): r for r in rows}


AUDIO_TOLERANCE_LSB = 8  # see assert_same_audio


def assert_same_audio(files: dict[str, bytes], reference: dict[str, bytes]) -> None:
    """The same turns' audio in two OUTs: same length, samples equal up to a few 16-bit steps. Not byte-equal:
    Mimi's decode of identical codes can round differently with another batch composition (observed: 1 step in
    one sample of one turn), so the sha256 of a turn's audio is not stable across runs; its codes are."""
    ref_audio = sorted(k for k in reference if k.startswith("audio/"))
    assert sorted(k for k in files if k.startswith("audio/")) == ref_audio
    for key in ref_audio:
        a = sf.read(io.BytesIO(files[key]), dtype="int16")[0].astype(np.int32)
        b = sf.read(io.BytesIO(reference[key]), dtype="int16")[0].astype(np.int32)
        assert a.shape == b.shape, key
        assert a.size == 0 or np.abs(a - b).max() <= AUDIO_TOLERANCE_LSB, key


def check_crash_state(files: dict[str, bytes]) -> None:
    """What a crash may leave: committed turns with their audio and codes; a metadata file only for a conversation
    whose every turn is committed, holding exactly those rows."""
    committed = commits_in(files)
    for cid, idx in committed:
        commit = json.loads(files[layout.commit_key(cid, idx)])
        assert commit["audio_path"] in files and layout.codes_key(cid, idx) in files, (cid, idx)
        assert hashlib.sha256(files[commit["audio_path"]]).hexdigest() == commit["sha256"], (cid, idx)
    for key in (k for k in files if k.startswith("metadata/") and not temp_names([k])):
        cid = key[len("metadata/"):-len(".parquet")]
        rows = pq.read_table(io.BytesIO(files[key])).to_pylist()
        assert sorted(r["turn_index"] for r in rows) == sorted(CONVERSATION_TURNS[cid]), key
        assert {(cid, i) for i in CONVERSATION_TURNS[cid]} <= committed, key


def turns_rendered(stdout: str) -> int:
    match = re.search(r"turns rendered: (\d+)", stdout)
    assert match, f"no summary in stdout:\n{stdout}"
    return int(match.group(1))


def status_counts(stdout: str) -> dict[str, int]:
    conv = re.search(r"conversations: (\d+) done, (\d+) failed, (\d+) pending", stdout)
    turns = re.search(r"turns: (\d+) done, (\d+) pending", stdout)
    assert conv and turns, f"unexpected status output:\n{stdout}"
    return {"conversations_done": int(conv[1]), "conversations_failed": int(conv[2]),
            "conversations_pending": int(conv[3]), "turns_done": int(turns[1]), "turns_pending": int(turns[2])}


# --- starting and killing a run ----------------------------------------------------------------------------------

def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", *map(str, args)]


PF_EXITING = 0x4  # /proc/<pid>/stat flags bit of a process already in exit (not yet a zombie)


def session_pids(sid: int, outside_group: int | None = None) -> dict[int, str]:
    """Live (not zombie) processes of session `sid`, with their command lines; only those outside process group
    `outside_group` when it is given."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp session tty tpgid flags ...
        exiting = int(fields[6]) & PF_EXITING
        if fields[0] != "Z" and not exiting and int(fields[3]) == sid and int(fields[2]) != outside_group:
            found[int(entry)] = cmdline.strip()[:160]
    return found


def kill_run(proc: subprocess.Popen) -> dict[int, str]:
    """SIGKILL the run's process group, then any process of its session still alive (Ray puts its workers in
    process groups of their own), by pid. Returns the processes that survived the process-group kill."""
    sid = proc.pid  # start_new_session: the driver leads its own session and process group
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # A member of the killed group can still be exiting (its memory, and so its command line, already gone, not yet
    # a zombie): it got SIGKILL and did not outlive anything, so only processes outside the group count.
    survivors = session_pids(sid, outside_group=sid)
    deadline = time.monotonic() + 30
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert not session_pids(sid), f"processes of the killed run still alive: {session_pids(sid)}"
    return survivors


def _count_commits(out: Path) -> int:
    folder = out / "commits"
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.rglob("*.json") if not p.name.startswith(TMP_PREFIX))


def _wait_for(proc: subprocess.Popen, ready, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}\nstdout:\n{out}\nstderr:\n{err}")
        if time.monotonic() > deadline:
            kill_run(proc)
            pytest.fail(f"no {what} within {timeout_s} s")
        time.sleep(0.01)


SLOW_RENAME = '''
import os, time
_delay = float(os.environ.get("CSM_TEST_SLOW_RENAME_S") or 0)
if _delay > 0:
    _replace = os.replace

    def _slow_replace(src, dst, *args, **kwargs):
        if os.path.basename(os.fsdecode(src)).startswith(".tmp-"):
            time.sleep(_delay)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _slow_replace
'''


@dataclass
class Outcome:
    trial: Trial
    out: Path
    command: list[str]
    sid: int = 0  # session id of the killed run (its driver's pid)
    commits_at_kill: int = 0  # seen by the poller when it decided to kill
    survivors: dict[int, str] = field(default_factory=dict)
    at_crash: dict[str, bytes] = field(default_factory=dict)
    mtimes_at_crash: dict[str, int] = field(default_factory=dict)
    status: subprocess.CompletedProcess | None = None
    rerun: subprocess.CompletedProcess | None = None
    after: dict[str, bytes] = field(default_factory=dict)
    mtimes_after: dict[str, int] = field(default_factory=dict)


def _mtimes(out: Path) -> dict[str, int]:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def run_trial(trial: Trial, manifest: Path, root: Path) -> Outcome:
    out = root / "out"
    command = cli_command("run", manifest, "--out", out, *JOB_ARGS)
    env = dict(os.environ)
    if trial.slow_rename_s:
        hook = root / "slow-rename"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(SLOW_RENAME)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
        env["CSM_TEST_SLOW_RENAME_S"] = str(trial.slow_rename_s)
    mark = root / "retry-mark"
    if trial.slow_retry_s:
        env = hook_env(root / "retry-hook", env, CSM_TEST_RETRY_MARK=str(mark),
                       CSM_TEST_RETRY_SLEEP_S=str(trial.slow_retry_s))
    outcome = Outcome(trial, out, command)
    proc = subprocess.Popen(command, cwd=root, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    outcome.sid = proc.pid
    try:
        if trial.trigger == "job-record":
            _wait_for(proc, lambda: (out / layout.JOB_RECORD).is_file(), "job record")
        else:
            _wait_for(proc, lambda: _count_commits(out) > 0, "first commit record")
        if trial.trigger == "temp-file":
            _wait_for(proc, lambda: bool(temp_names(p.relative_to(out).as_posix() for p in out.rglob("*"))),
                      "write in flight")
        if trial.trigger == "retry":
            mark.unlink(missing_ok=True)  # a re-render that starts after the first commit
            _wait_for(proc, mark.exists, "re-render after the first commit")
        time.sleep(trial.delay_s)
        outcome.commits_at_kill = _count_commits(out)
    finally:
        if proc.poll() is None:
            outcome.survivors = kill_run(proc)
    proc.communicate()
    outcome.at_crash, outcome.mtimes_at_crash = read_local_out(out), _mtimes(out)
    outcome.status = subprocess.run(cli_command("status", out, manifest), cwd=root, capture_output=True, text=True,
                                    timeout=120)
    outcome.rerun = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    outcome.after, outcome.mtimes_after = read_local_out(out), _mtimes(out)
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, csm_cache) -> dict[str, Outcome]:
    manifest = write_manifest(tmp_path_factory.mktemp("crash-manifest") / "dialogue.parquet")
    results = {}
    for trial in TRIALS:
        started = time.monotonic()
        results[trial.name] = run_trial(trial, manifest, tmp_path_factory.mktemp(f"crash-{trial.name}"))
        o = results[trial.name]
        print(f"\n[crash trial {trial.name}] kill {trial.delay_s}s after {trial.trigger}: "
              f"{len(commits_in(o.at_crash))} turns committed, {len(temp_names(o.at_crash))} temp files, "
              f"{len(o.survivors)} processes outlived the process-group kill {sorted(o.survivors.values())}; took "
              f"{time.monotonic() - started:.1f}s")
    return results


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# --- the crash trials --------------------------------------------------------------------------------------------

names = pytest.mark.parametrize("name", [t.name for t in TRIALS])


@names
def test_kill_landed_where_the_trial_says(outcomes, name):
    o = outcomes[name]
    committed = commits_in(o.at_crash)
    if o.trial.trigger == "job-record":
        assert o.commits_at_kill == 0 and committed == set(), "the kill came after the first commit"
    else:
        assert 0 < len(committed) < len(EXPECTED), f"{len(committed)} turns committed at the kill: not mid-job"
    if o.trial.slow_rename_s:
        assert temp_names(o.at_crash), "the kill did not land inside a write"


@names
def test_crash_leaves_a_consistent_output(outcomes, name):
    check_crash_state(outcomes[name].at_crash)


@names
def test_status_after_crash_adds_up(outcomes, name):
    o = outcomes[name]
    ok(o.status)
    counts = status_counts(o.status.stdout)
    committed = commits_in(o.at_crash)
    assert counts["turns_done"] == len(committed)
    assert counts["turns_done"] + counts["turns_pending"] == len(EXPECTED)
    complete = {cid for cid, turns in CONVERSATION_TURNS.items() if {(cid, i) for i in turns} <= committed}
    assert counts["conversations_done"] == len(complete)
    assert counts["conversations_failed"] == 0
    assert counts["conversations_done"] + counts["conversations_pending"] == len(CONVERSATION_TURNS)


@names
def test_rerun_completes_with_every_turn_exactly_once(outcomes, name):
    o = outcomes[name]
    ok(o.rerun)
    check_complete_out({k: v for k, v in o.after.items() if not temp_names([k])})


@names
def test_rerun_renders_only_what_was_not_committed(outcomes, name):
    o = outcomes[name]
    ok(o.rerun)
    committed = commits_in(o.at_crash)
    assert turns_rendered(o.rerun.stdout) == len(EXPECTED) - len(committed)
    # Every file of a committed turn, and every metadata file, is as the crash left it: same bytes, same mtime.
    kept = [k for k in o.at_crash if k.startswith("metadata/") and not temp_names([k])]
    for cid, idx in committed:
        commit = json.loads(o.at_crash[layout.commit_key(cid, idx)])
        kept += [layout.commit_key(cid, idx), layout.codes_key(cid, idx), commit["audio_path"]]
    for key in kept:
        assert o.after.get(key) == o.at_crash[key], f"{key} was rewritten with other bytes"
        assert o.mtimes_after[key] == o.mtimes_at_crash[key], f"{key} was written again"


def test_rerun_removes_temp_files_of_interrupted_writes(outcomes):
    o = outcomes["mid-write"]
    assert temp_names(o.at_crash), "precondition: the crash left temp files"
    assert temp_names(o.after) == []


@names
def test_no_temp_files_after_rerun_unless_the_crash_left_them(outcomes, name):
    o = outcomes[name]
    assert set(temp_names(o.after)) <= set(temp_names(o.at_crash)), "the re-run itself left temp files"


@names
def test_killed_run_left_no_processes(outcomes, name):
    """Only Ray's worker processes (in process groups of their own) outlive the process-group kill, and kill_run
    ended them: none of the session's processes is alive now."""
    o = outcomes[name]
    for pid, cmdline in o.survivors.items():
        assert cmdline.startswith("ray::"), f"non-Ray process {pid} outlived the process-group kill: {cmdline}"
    assert o.sid and session_pids(o.sid) == {}


def test_all_trials_end_with_identical_renders(outcomes):
    """Independent trials, killed at different moments: every turn has the same codes, seed, length and audio."""
    # Stale temp files (a known bug, test_rerun_removes_temp_files_of_interrupted_writes) are not renders.
    finals = {name: {k: v for k, v in o.after.items() if not temp_names([k])} for name, o in outcomes.items()}
    reference_name, reference = next(iter(finals.items()))
    ref_codes = codes_in(reference)
    ref_rows = {(r["conversation_id"], r["turn_index"]): r for r in metadata_rows(reference)}
    for name, files in finals.items():
        codes = codes_in(files)
        assert set(codes) == set(ref_codes) == EXPECTED, name
        for key, value in ref_codes.items():
            np.testing.assert_array_equal(codes[key], value, err_msg=f"{name} vs {reference_name}: {key}")
        rows = {(r["conversation_id"], r["turn_index"]): r for r in metadata_rows(files)}
        for key, row in ref_rows.items():
            # The same attempt kept, wherever the kill landed: a resumed turn draws the same attempts.
            for column in ("seed", "num_frames", "num_samples", "end_reason", "temperature", "top_k", "qc_status",
                           "qc_failed", "qc_attempt", "qc_attempts"):
                assert rows[key][column] == row[column], f"{name} vs {reference_name}: {key} {column}"
        assert_same_audio(files, reference)


# --- conversation ids that would be paths ------------------------------------------------------------------------

def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size if p.is_file() else -1)
            for p in folder.rglob("*")}


@pytest.mark.parametrize("conversation_id", ["../evil", "a/b"])
def test_path_like_conversation_id_is_refused_and_nothing_is_written(tmp_path, csm_render, conversation_id):
    job = tmp_path / "job"
    manifest = write_manifest(job / "dialogue.parquet", rows=[(conversation_id, 0, 0, "Hello."), ("ok", 0, 1, "Hi.")])
    before = _tree(tmp_path)
    result = csm_render("run", manifest, "--out", job / "out", *JOB_ARGS, cwd=job)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "conversation_id" in result.stderr and conversation_id in result.stderr
    assert _tree(tmp_path) == before  # nothing in OUT, nothing next to it, nothing above it


def test_conversation_id_with_the_reserved_temp_prefix_is_refused(tmp_path, csm_render):
    manifest = write_manifest(tmp_path / "dialogue.parquet", rows=[(".tmp-x", 0, 0, "Hello.")])
    result = csm_render("validate", manifest, "--model", "random:tiny")
    assert result.returncode == 2, result.stdout + result.stderr
    assert ".tmp-x" in result.stderr


def test_ctrl_c_stops_cleanly_and_the_rerun_finishes_the_job(tmp_path, csm_cache):
    """SIGINT to the run's process group (what a terminal's Ctrl-C sends) once turns are committed: exit 130 with
    a resume hint, every process of the run gone, what was committed consistent, nothing half written under a
    final name; the same command then finishes the job exactly once."""
    manifest = write_manifest(tmp_path / "dialogue.parquet")
    out = tmp_path / "out"
    command = cli_command("run", manifest, "--out", out, *JOB_ARGS)
    proc = subprocess.Popen(command, cwd=tmp_path, env=dict(os.environ), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(proc, lambda: _count_commits(out) > 0, "first commit record")
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_run(proc)
        pytest.fail("the run did not stop after Ctrl-C")
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    deadline = time.monotonic() + 30  # Ray's workers exit once their raylet has shut down
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_pids(proc.pid) == {}, "processes of the interrupted run are still alive"
    at_stop = read_local_out(out)
    check_crash_state({k: v for k, v in at_stop.items() if not temp_names([k])})
    committed = commits_in(at_stop)
    assert 0 < len(committed) < len(EXPECTED), "precondition: stopped mid-job"

    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    ok(rerun)
    assert turns_rendered(rerun.stdout) == len(EXPECTED) - len(committed)
    check_complete_out(read_local_out(out))
