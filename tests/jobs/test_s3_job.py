"""Whole jobs with OUT on S3: moto's real HTTP server, the `csm-render` CLI in a subprocess (its Ray workers write
straight to the bucket), everything read back through a plain boto3 client.

- a job to s3://bucket/job1: every turn exactly once; a re-run (through a counting proxy) writes nothing;
  `csm-render status` reads the bucket;
- the same job to a local folder: the same turns with identical codes;
- the same job through a proxy that fails a seeded 20% of requests (500, 503 SlowDown, connection resets before and
  after the request reached S3): it completes with the same turns and codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import boto3
import numpy as np
import pytest

from .s3_faults import FAULTS, FaultyS3Proxy
from jobs.storage import layout

from .test_crash_resume import (EXPECTED, JOB_ARGS, assert_same_audio, check_complete_out, check_crash_state,
                                codes_in, commits_in, kill_run, read_local_out, status_counts, turns_rendered,
                                write_manifest)

pytestmark = pytest.mark.slow

ACCESS_KEY = "AKIATESTINGACCESSKEY1"
SECRET_KEY = "testing-SECRET-key-never-to-be-printed"
FAULT_RATE = float(os.environ.get("CSM_TEST_S3_FAULT_RATE", "0.2"))  # override to probe other rates
FAULT_SEED = int(os.environ.get("CSM_TEST_S3_FAULT_SEED", "1234"))
WRITES = ("PUT", "POST", "DELETE")


@pytest.fixture(scope="module")
def s3(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY)


@pytest.fixture(scope="module")
def bucket(s3):
    name = f"csm-render-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def env(csm_cache, tmp_path_factory) -> dict:
    """The CLI's environment: fake credentials through the standard AWS variables, no user AWS config, no endpoint
    (each command names its own with --s3-endpoint-url)."""
    home = tmp_path_factory.mktemp("aws")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION="us-east-1",
               AWS_CONFIG_FILE=str(home / "no-config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "no-credentials"))
    return env


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("s3-manifest") / "dialogue.parquet")


@pytest.fixture(scope="module")
def cli(env):
    def run(*args, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=timeout)

    return run


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def read_s3_out(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under s3://bucket/prefix/, by key relative to the prefix."""
    files = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for obj in page.get("Contents", ()):
            files[obj["Key"][len(prefix) + 1:]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return files


def listing(s3, bucket: str, prefix: str = "") -> dict[str, tuple[str, object]]:
    """Key -> (ETag, LastModified) of every object under the prefix."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", ())}


def job(manifest: Path, out: str, endpoint: str | None = None) -> tuple:
    extra = ("--s3-endpoint-url", endpoint) if endpoint else ()
    return ("run", manifest, "--out", out, *extra, *JOB_ARGS)


# --- a job on S3 -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first(cli, manifest, endpoint, s3, bucket):
    result = cli(*job(manifest, f"s3://{bucket}/job1", endpoint))
    return result, read_s3_out(s3, bucket, "job1")


def test_s3_job_renders_every_turn_exactly_once(first):
    result, files = first
    ok(result)
    assert turns_rendered(result.stdout) == len(EXPECTED)
    check_complete_out(files)


def test_s3_rerun_renders_and_writes_nothing(first, cli, manifest, endpoint, s3, bucket):
    ok(first[0])
    before = listing(s3, bucket, "job1/")
    with FaultyS3Proxy(endpoint, rate=0.0) as counting:  # a pass-through that logs every request
        result = cli(*job(manifest, f"s3://{bucket}/job1", counting.url))
    ok(result)
    assert turns_rendered(result.stdout) == 0
    assert "6 already complete" in result.stdout
    assert counting.requests, "the re-run did not go through the proxy"
    writes = [r for r in counting.requests if r[0] in WRITES]
    # The one thing a re-run writes is OUT's lease (jobs/storage/run_lock.py): the next generation taken, the first run's
    # released record deleted, the new one marked released at the end.
    assert writes and [r for r in writes if "/job1/locks/" not in r[1]] == []
    outputs = lambda objects: {k: v for k, v in objects.items() if not k.startswith("job1/locks/")}
    assert outputs(listing(s3, bucket, "job1/")) == outputs(before)


def test_s3_status(first, cli, manifest, endpoint, bucket):
    ok(first[0])
    result = cli("status", f"s3://{bucket}/job1", manifest, "--s3-endpoint-url", endpoint)
    ok(result)
    assert f"s3://{bucket}/job1" in result.stdout and "random:tiny" in result.stdout
    assert status_counts(result.stdout) == {"conversations_done": 6, "conversations_failed": 0,
                                            "conversations_pending": 0, "turns_done": len(EXPECTED),
                                            "turns_pending": 0}


@pytest.mark.parametrize("command", ["validate", "run", "status"])
def test_missing_s3_objects_are_clear_errors(cli, endpoint, bucket, tmp_path, command):
    """A manifest that is not there, a bucket that is not there: exit 2 with a message naming it, no traceback,
    nothing written."""
    missing = f"s3://{bucket}/nowhere/dialogue.parquet"
    args = {"validate": ("validate", missing, "--no-audio-check", "--model", "random:tiny"),
            "run": job(missing, str(tmp_path / "out"), endpoint),
            "status": ("status", "s3://no-such-bucket-here/out")}[command]
    result = cli(*args, "--s3-endpoint-url", endpoint) if command != "run" else cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert ("no-such-bucket-here" if command == "status" else "nowhere/dialogue.parquet") in result.stderr
    assert not (tmp_path / "out").exists()


def test_local_job_matches_the_s3_job(first, cli, manifest, tmp_path_factory):
    """Renders are deterministic for a seed: the same command into a folder gives the same turns and codes
    (and audio up to rounding, see assert_same_audio)."""
    ok(first[0])
    out = tmp_path_factory.mktemp("s3-local") / "out"
    result = cli(*job(manifest, str(out)))
    ok(result)
    local = read_local_out(out)
    check_complete_out(local)
    _assert_same_renders(local, first[1])


def _assert_same_renders(files: dict[str, bytes], reference: dict[str, bytes]) -> None:
    codes, ref = codes_in(files), codes_in(reference)
    assert set(codes) == set(ref) == EXPECTED
    for key in sorted(ref):
        np.testing.assert_array_equal(codes[key], ref[key], err_msg=str(key))
    assert_same_audio(files, reference)


# --- the same job through a faulty S3 ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def faulty(cli, manifest, endpoint, s3, bucket):
    with FaultyS3Proxy(endpoint, rate=FAULT_RATE, seed=FAULT_SEED) as proxy:
        result = cli(*job(manifest, f"s3://{bucket}/job-faults", proxy.url))
        requests = list(proxy.requests)
    faults = Counter(outcome for _, _, outcome in requests if outcome != "ok")
    print(f"\n[s3 faults] rate {FAULT_RATE}, seed {FAULT_SEED}: {len(requests)} requests, "
          f"{sum(faults.values())} faults injected {dict(faults)}; exit {result.returncode}")
    return result, read_s3_out(s3, bucket, "job-faults"), requests, faults


def test_faulty_s3_job_completes_exactly_once(faulty):
    result, files, _, faults = faulty
    ok(result)
    assert sum(faults.values()) > 0 and set(faults) <= set(FAULTS)
    assert turns_rendered(result.stdout) == len(EXPECTED)
    check_complete_out(files)


def test_faulty_s3_job_renders_what_the_fault_free_job_did(faulty, first):
    ok(first[0])
    ok(faulty[0])
    _assert_same_renders(faulty[1], first[1])


def test_faults_hit_writes_reads_and_listings(faulty):
    """The injected faults were not all on one kind of request."""
    _, _, requests, _ = faulty
    hit = {method for method, _, outcome in requests if outcome != "ok"}
    assert "PUT" in hit and hit & {"GET", "HEAD"}, hit


# --- bad input -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conversation_id", ["../evil"])
def test_path_like_conversation_id_writes_nothing_to_the_bucket(cli, endpoint, s3, bucket, tmp_path,
                                                                 conversation_id):
    manifest = write_manifest(tmp_path / "dialogue.parquet", rows=[(conversation_id, 0, 0, "Hello.")])
    before = listing(s3, bucket)
    result = cli(*job(manifest, f"s3://{bucket}/job-evil", endpoint))
    assert result.returncode == 2, result.stdout + result.stderr
    assert conversation_id in result.stderr
    assert listing(s3, bucket) == before


# --- killed while writing to S3 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("delay_s", [0.0, 0.4])
def test_run_killed_mid_job_on_s3_resumes_exactly_once(cli, env, manifest, endpoint, s3, bucket, delay_s):
    """SIGKILL the whole run (driver, Ray, the worker writing to the bucket) `delay_s` after the first commit object
    appears, while the worker's writes are in flight; what the bucket holds then is consistent, and the re-run
    completes without writing any committed turn again."""
    prefix = f"job-killed-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "jobs.cli", *map(str, job(manifest, f"s3://{bucket}/{prefix}", endpoint))]
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    commits = lambda: [k for k in listing(s3, bucket, f"{prefix}/commits/")]
    deadline = time.monotonic() + 180
    while not commits():
        assert proc.poll() is None, f"the run ended before its first commit: {proc.communicate()}"
        if time.monotonic() > deadline:
            kill_run(proc)
            pytest.fail("no commit within 180 s")
        time.sleep(0.02)
    time.sleep(delay_s)
    kill_run(proc)
    proc.communicate()

    at_crash = read_s3_out(s3, bucket, prefix)
    check_crash_state(at_crash)
    committed = commits_in(at_crash)
    assert len(committed) < len(EXPECTED), "precondition: killed mid-job"
    print(f"\n[s3 kill] {delay_s} s after the first commit: {len(committed)} turns committed at the kill")
    before = listing(s3, bucket, f"{prefix}/")

    rerun = cli(*job(manifest, f"s3://{bucket}/{prefix}", endpoint))
    ok(rerun)
    assert turns_rendered(rerun.stdout) == len(EXPECTED) - len(committed)
    check_complete_out(read_s3_out(s3, bucket, prefix))
    after = listing(s3, bucket, f"{prefix}/")
    for cid, idx in committed:  # the committed turn's objects were not written again (same ETag, same time)
        commit = json.loads(at_crash[layout.commit_key(cid, idx)])
        for key in (layout.commit_key(cid, idx), layout.codes_key(cid, idx), commit["audio_path"]):
            assert after[f"{prefix}/{key}"] == before[f"{prefix}/{key}"], key
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/").get("Uploads", []) == []
