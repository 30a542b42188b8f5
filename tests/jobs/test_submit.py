"""`csm-render submit` against a real Ray head started here, its Job Submission API on loopback: the job runs on
the cluster with the project shipped in its runtime environment, `--wait` follows it and returns its exit code,
and a second submit of the same id starts nothing."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

ROWS = [("a", 0, 0, "Hello there."), ("a", 1, 1, "Hi."), ("b", 0, 1, "One more line.")]
JOB = ("--model", "random:tiny", "--max-audio-length-ms", "240", "--batch-size", "2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dashboard(csm_cache, tmp_path_factory):
    """A one-node Ray cluster with its dashboard (the Jobs API) on 127.0.0.1; yields the API's URL."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    port, metrics = free_port(), free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
        "metrics_export_port": metrics, "_system_config": {"metrics_report_interval_ms": 500}})
    try:
        yield Head(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics")
    finally:
        ray.shutdown()
        cluster.shutdown()


@dataclass
class Head:
    jobs_api: str  # the dashboard's Job Submission API
    metrics: str  # the node's Prometheus endpoint, where the dashboard's metrics come from


def submit(*args, cwd: Path):
    return subprocess.run([sys.executable, "-m", "jobs.cli", "submit", *map(str, args)], cwd=cwd,
                          env=dict(os.environ), capture_output=True, text=True, timeout=400)


def write_manifest(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.parquet"
    pq.write_table(pa.table({"conversation_id": [r[0] for r in ROWS],
                             "turn_index": pa.array([r[1] for r in ROWS], pa.int32()),
                             "speaker": pa.array([r[2] for r in ROWS], pa.int32()),
                             "text": [r[3] for r in ROWS]}), path)
    return path


def jobs_named(address: str, submission_id: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return [j for j in JobSubmissionClient(address).list_jobs() if j.submission_id == submission_id]


def test_submit_waits_for_the_job_and_a_resubmit_starts_nothing(dashboard, tmp_path):
    address = dashboard.jobs_api
    manifest = write_manifest(tmp_path / "in")
    # Relative paths, from the folder the user is in: the cluster's entrypoint runs elsewhere.
    args = ("in/m.parquet", "--out", "out", *JOB, "--address", address, "--submission-id", "job-1", "--wait")
    first = submit(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr + first.stdout
    assert first.stdout.splitlines()[0] == "job-1"
    assert "turns rendered: 3" in first.stdout  # the job's own summary, followed from its logs
    commits = tmp_path / "out" / "commits"
    assert sorted(p.relative_to(commits).as_posix() for p in commits.rglob("*.json")) == [
        "a/000000.json", "a/000001.json", "b/000000.json"]
    assert manifest.is_file()
    (job,) = jobs_named(address, "job-1")
    assert len(job.runtime_env["py_modules"]) == 2  # jobs and csm_worker, uploaded to the cluster

    again = submit(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already submitted (SUCCEEDED)" in again.stderr
    assert len(jobs_named(address, "job-1")) == 1


def test_the_jobs_exit_code_comes_back_with_wait(dashboard, tmp_path):
    # A manifest that does not exist on the cluster: the job's `run` exits 2 (bad input), and so does submit.
    result = submit("missing.parquet", "--out", "out", *JOB, "--address", dashboard.jobs_api,
                    "--submission-id", "job-2", "--wait", cwd=tmp_path)
    assert result.returncode == 2, result.stderr + result.stdout
    assert "missing.parquet" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_unreachable_cluster_is_a_clear_error(tmp_path):
    result = submit("m.parquet", "--out", "out", "--address", f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot submit to http://127.0.0.1:" in result.stderr


def test_an_address_with_a_token_in_it_is_never_printed(tmp_path):
    address = f"http://ops:s3cr3t-token@127.0.0.1:{free_port()}/?sig=abc123"
    result = submit("m.parquet", "--out", "out", "--address", address, cwd=tmp_path)
    assert result.returncode == 2 and "cannot submit to http://127.0.0.1:" in result.stderr
    assert "s3cr3t-token" not in result.stderr + result.stdout and "abc123" not in result.stderr + result.stdout


def test_a_proxy_error_with_a_token_in_the_address_is_a_clear_error(tmp_path):
    """A dashboard behind a proxy that answers 502: exit 2 with a message, no traceback, no token."""
    import http.server
    import threading

    class BadGateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(502)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BadGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"http://ops:s3cr3t-token@127.0.0.1:{server.server_port}"
        result = submit("m.parquet", "--out", "out", "--address", address, cwd=tmp_path)
    finally:
        server.shutdown()
    assert result.returncode == 2, result.stderr
    assert "cannot submit to http://127.0.0.1:" in result.stderr and "Traceback" not in result.stderr
    assert "s3cr3t-token" not in result.stderr + result.stdout


def scrape(url: str) -> dict[str, float]:
    """csm-render's counters on a node's Prometheus endpoint, summed over workers (Ray prefixes them "ray_")."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    totals: dict[str, float] = {}
    for name, value in re.findall(r"^ray_(csm_render_\w+?)(?:_total)?\{[^}]*\} ([0-9.e+-]+)$", text, re.M):
        totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def test_workers_publish_their_counts_as_ray_metrics(dashboard, tmp_path):
    """The render workers' counters reach the node's metrics endpoint, which the Ray dashboard's charts read."""
    before = scrape(dashboard.metrics)
    write_manifest(tmp_path / "in")
    result = submit("in/m.parquet", "--out", "out", *JOB, "--address", dashboard.jobs_api, "--submission-id",
                    "job-metrics", "--wait", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    grown = lambda name: scrape(dashboard.metrics).get(name, 0.0) - before.get(name, 0.0)
    deadline = time.monotonic() + 60  # metrics are reported every 500 ms here
    while grown("csm_render_conversations") < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert grown("csm_render_conversations") == 2  # this job's 2 conversations and 3 turns
    assert grown("csm_render_turns") == 3
    assert grown("csm_render_frames") >= 3 and grown("csm_render_audio_seconds") > 0
    assert grown("csm_render_failures") == 0


def test_the_run_command_submitted_carries_only_the_flags_given():
    """`submit` passes `run` the options given and no others: a flag left unset (Click 8.5 gives it no default
    but a sentinel) must not reach the cluster's `run` as set; --new-run there would discard the job."""
    from jobs.cli import _run_args, main

    submit = main.commands["submit"]
    plain = _run_args(submit.make_context("submit", ["m.parquet", "--out", "/tmp/o", "--address", "http://h:8265"]))
    assert "--new-run" not in plain and "--rerender-failed" not in plain
    flagged = _run_args(submit.make_context("submit", ["m.parquet", "--out", "/tmp/o", "--address", "http://h:8265",
                                                       "--rerender-failed", "--qc-retries", "0"]))
    assert "--rerender-failed" in flagged and "--new-run" not in flagged
    assert flagged[flagged.index("--qc-retries") + 1] == "0"
