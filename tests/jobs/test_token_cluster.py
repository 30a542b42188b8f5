"""Joining a Ray cluster with token authentication on (jobs/cluster/auth.py).

The end-to-end tests start a real head with `ray start --head --block` (RAY_AUTH_MODE=token, the token in a
temporary HOME's ~/.ray/auth_token) on free loopback ports, in a temporary folder of its own, and join it with the
CLI in subprocesses whose environment names the token in each of Ray's three ways (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) and never sets RAY_AUTH_MODE: `run --address`, `bench-scaling --address`
and `submit --wait` complete; a wrong token is one line and exit 2 at once (Ray alone prints an InvalidAuthToken
line a second until it gives up). The token never appears in any output. The fast tests check token discovery,
the messages and the Jobs API probe.
"""

from __future__ import annotations

import http.server
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from jobs.cluster import auth
from tests.jobs.test_submit import JOB, free_port, write_manifest

# Variables that would decide which token or cluster a CLI run uses: each test sets exactly the ones it means.
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
QUICK_S = 60  # a bound, not a measurement: the refusal comes at once, without Ray's retries (asserted absent)


@dataclass
class Head:
    root: Path  # everything of this cluster: its --temp-dir, its HOME, the clients' homes
    token: str
    gcs: str  # 127.0.0.1:PORT, for `run --address`
    jobs_api: str  # http://127.0.0.1:PORT, for `submit --address`

    def env(self, home: str = "empty-home", **variables) -> dict[str, str]:
        """A CLI's environment: HOME a folder of its own under root (no ~/.ray/auth_token unless a test puts one
        there), no Ray auth or address variable but `variables`."""
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        (self.root / home).mkdir(exist_ok=True)
        return {**env, "HOME": str(self.root / home), **variables}


def cli(*args, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def write_token(path: Path, token: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")  # as `echo` would write it: Ray strips the newline, and so must we
    return path


@pytest.fixture(scope="module")
def head(csm_cache):
    # A short folder of its own: Ray's unix sockets live under --temp-dir and their paths must stay short, and a
    # --temp-dir of its own keeps this cluster out of /tmp/ray (ray_current_cluster) and other tests' Rays.
    root = Path(tempfile.mkdtemp(prefix="csm-tok-", dir="/tmp"))
    token = "tok-" + secrets.token_hex(16)
    write_token(root / "head-home" / ".ray" / "auth_token", token)
    gcs_port, dashboard_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env.update(HOME=str(root / "head-home"), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
    log = open(root / "head.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port", str(gcs_port),
         "--node-ip-address", "127.0.0.1", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dashboard_port), "--num-cpus", "2", "--temp-dir", str(root / "ray"),
         # Ports other Rays on this machine would also take by default.
         "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port())],
        env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = Head(root, token, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}")
    try:
        wait_until_up(cluster, proc)
        yield cluster
    finally:
        stop(proc, root)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def wait_until_up(cluster: Head, proc: subprocess.Popen, timeout_s: float = 150) -> None:
    """Until the dashboard answers with the token (the GCS is up before it); fails early if `ray start` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited {proc.returncode}:\n{(cluster.root / 'head.log').read_text()[-3000:]}")
        try:
            headers = {"Authorization": f"Bearer {cluster.token}"}
            if requests.get(cluster.jobs_api + "/api/version", headers=headers, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"no Ray head within {timeout_s} s:\n{(cluster.root / 'head.log').read_text()[-3000:]}")


def stop(proc: subprocess.Popen, root: Path) -> None:
    """`ray stop` for this cluster only (`ray stop` itself stops every Ray on the machine, other tests' too):
    SIGTERM to `ray start --block`, which stops the processes it started, then SIGKILL to whatever is left that
    names this cluster's folder (its raylet, GCS, workers and agents all carry it in their command lines)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for pid in processes_naming(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def processes_naming(root: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(root).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # the process ended meanwhile
                pass
    return pids


def assert_token_never_printed(result, *tokens: str) -> None:
    for token in tokens:
        assert token not in result.stdout + result.stderr


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_run_joins_a_token_secured_cluster_with_the_token_file_named_by_env(head, tmp_path):
    manifest = write_manifest(tmp_path / "in")
    token_file = write_token(head.root / "client-token", head.token)
    # Absolute paths: the cluster's workers write OUT from a folder of their own, as on any cluster.
    result = cli("run", manifest, "--out", tmp_path / "out", *JOB, "--device", "cpu", "--address", head.gcs,
                 env=head.env(RAY_AUTH_TOKEN_PATH=str(token_file)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "turns rendered: 3" in result.stdout
    assert "InvalidAuthToken" not in result.stderr
    assert len(list((tmp_path / "out" / "commits").rglob("*.json"))) == 3
    assert_token_never_printed(result, head.token)


@pytest.mark.slow
def test_bench_scaling_joins_a_token_secured_cluster_with_the_token_in_env(head, tmp_path):
    result = cli("bench-scaling", "--model", "random:tiny", "--workers", "1", "--conversations", "2", "--turns",
                 "1", "--max-audio-length-ms", "240", "--batch-size", "2", "--address", head.gcs, "--json",
                 env=head.env(RAY_AUTH_TOKEN=head.token), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert '"workers": 1, "turns": 2' in result.stdout
    assert_token_never_printed(result, head.token)


@pytest.mark.slow
def test_submit_waits_for_a_job_on_a_token_secured_cluster_with_the_default_token_file(head, tmp_path):
    write_manifest(tmp_path / "in")
    write_token(head.root / "submit-home" / ".ray" / "auth_token", head.token)
    result = cli("submit", "in/m.parquet", "--out", "out", *JOB, "--address", head.jobs_api, "--submission-id",
                 "tok-1", "--wait", env=head.env("submit-home"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.splitlines()[0] == "tok-1"
    assert "turns rendered: 3" in result.stdout  # the job's own summary: its `run --address auto` joined too
    assert len(list((tmp_path / "out" / "commits").rglob("*.json"))) == 3
    assert_token_never_printed(result, head.token)


WRONG = "wrong-" + secrets.token_hex(8)


@pytest.mark.slow
@pytest.mark.parametrize("command, token_from", [("run", "RAY_AUTH_TOKEN"), ("submit", "RAY_AUTH_TOKEN_PATH")])
def test_a_wrong_token_is_one_clear_line_and_exit_2_at_once(head, tmp_path, command, token_from):
    if token_from == "RAY_AUTH_TOKEN":
        variables, source = {"RAY_AUTH_TOKEN": WRONG}, "RAY_AUTH_TOKEN"
    else:
        stale = write_token(tmp_path / "stale-token", WRONG)
        variables, source = {"RAY_AUTH_TOKEN_PATH": str(stale)}, f"RAY_AUTH_TOKEN_PATH={stale}"
    address = head.gcs if command == "run" else head.jobs_api
    expected = (f"error: the Ray cluster at {address} " if command == "run" else
                f"error: cannot submit to {address}: the cluster's Jobs API ") + f"refused the token from {source} "
    write_manifest(tmp_path / "in")
    # Ray alone retries the refused connection, one InvalidAuthToken line a second; a hang fails with TimeoutExpired.
    result = cli(command, "in/m.parquet", "--out", "out", *JOB, "--address", address, env=head.env(**variables),
                 cwd=tmp_path, timeout=QUICK_S)
    assert result.returncode == 2, result.stderr + result.stdout
    (line,) = error_lines(result)
    assert line.startswith(expected) and "ray get-auth-token" in line
    assert "InvalidAuthToken" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert_token_never_printed(result, head.token, WRONG)


# Fast tests: where the token comes from, and what the probes make of a server's answers.

def test_the_token_comes_from_where_ray_looks_first(tmp_path):
    home = tmp_path / "home"
    write_token(home / ".ray" / "auth_token", "from-home")
    path = write_token(tmp_path / "t", "from-path")
    env = {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(path)}
    assert auth.find_token(env, home) == auth.Token("from-env", "RAY_AUTH_TOKEN")
    from_path = auth.Token("from-path", f"RAY_AUTH_TOKEN_PATH={path}")
    assert auth.find_token({**env, "RAY_AUTH_TOKEN": " "}, home) == from_path  # empty: the next source, as in Ray
    assert auth.find_token({}, home) == auth.Token("from-home", str(home / ".ray" / "auth_token"))
    assert auth.find_token({}, tmp_path / "nobody") is None


@pytest.mark.parametrize("content", [None, "\n"])
def test_a_token_file_that_is_missing_or_empty_is_a_clear_error(tmp_path, content):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(auth.ClusterAuthError, match="RAY_AUTH_TOKEN_PATH=") as error:
        auth.find_token({"RAY_AUTH_TOKEN_PATH": str(path)}, tmp_path)
    assert str(path) in str(error.value)


def test_the_token_is_in_no_message_or_repr(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "sekrit-value")
    assert "sekrit-value" not in repr(auth.find_token())
    with pytest.raises(auth.ClusterAuthError) as error:
        auth.check_access("the cluster", lambda token: False)
    assert "sekrit-value" not in str(error.value) and "RAY_AUTH_TOKEN" in str(error.value)


def test_a_cluster_that_wants_a_token_we_do_not_have_says_where_to_put_one(monkeypatch, tmp_path):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(auth.ClusterAuthError, match="requires a token .* and none was found: set RAY_AUTH_TOKEN, "
                       "or RAY_AUTH_TOKEN_PATH to a file holding it, or copy it to ~/.ray/auth_token"):
        auth.check_access("the cluster", lambda token: False)


def test_an_open_cluster_gets_no_token(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))  # never read when none is asked for
    asked = []
    assert auth.check_access("the cluster", lambda token: asked.append(token) or True) is None
    assert asked == [None]


@pytest.fixture
def jobs_api():
    """A stand-in dashboard: /api/version answers 401 without a token, 403 with a wrong one, 200 with "good"."""

    class Dashboard(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            header = self.headers.get("Authorization")
            self.send_response(401 if header is None else 200 if header == "Bearer good" else 403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()


def test_the_jobs_api_probe_sends_the_token_as_a_bearer_header(jobs_api):
    probe = auth.jobs_api_probe(jobs_api)
    assert probe(None) is False
    assert probe(auth.Token("bad", "x")) is False
    assert probe(auth.Token("good", "x")) is True
    assert auth.jobs_api_probe(f"http://127.0.0.1:{free_port()}")(None) is None  # unreachable: left to Ray


def test_rays_refusals_are_recognised():
    from ray.exceptions import AuthenticationError

    assert auth.is_auth_failure(AuthenticationError("RAY_AUTH_TOKEN_PATH is set but file cannot be opened"))
    assert auth.is_auth_failure(ConnectionError("Unauthenticated: RPC error: InvalidAuthToken: missing"))
    assert not auth.is_auth_failure(ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379"))
