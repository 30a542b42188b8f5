"""Shared fixtures for the jobs tests.

`csm_cache` points CSM_RENDER_CACHE at a session-scoped temporary folder through `os.environ` itself (not
monkeypatch), so that every process the tests start (the `csm-render` CLI in a subprocess, the Ray workers it or
the test starts) inherits it and builds the `random:tiny` preset there, never in the user's home.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_ENV = {
    "CSM_RENDER_CACHE": None,  # filled in by the fixture
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage-stats prompt or network attempt from the Ray the tests start
}


@pytest.fixture(scope="session")
def csm_cache(tmp_path_factory):
    """CSM_RENDER_CACHE for the session, with the `random:tiny` preset built once up front (so concurrent
    processes never race to build it)."""
    path = tmp_path_factory.mktemp("csm-render-cache")
    saved = {name: os.environ.get(name) for name in _ENV}
    os.environ.update({**_ENV, "CSM_RENDER_CACHE": str(path)})
    from csm_worker.model import presets

    presets.preset_dir("random:tiny")
    yield path
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def csm_render(csm_cache):
    """Run `csm-render ARGS...` in a subprocess (so the Ray it starts also stops with it); returns the
    CompletedProcess with text stdout/stderr. `unset`: environment variables the command must not see (a Ray
    started in this test process sets RAY_AUTH_MODE in its environment, which a user's shell does not have)."""

    def run(*args, cwd=None, timeout=300, unset=()) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in unset}
        return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="module")
def endpoint():
    """moto's real S3 HTTP server on loopback, one per test module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._server.server_port}"
    finally:
        server.stop()


ACCESS_KEY = "AKIATESTINGACCESSKEY1"
SECRET_KEY = "testing-SECRET-key-never-to-be-printed"


@pytest.fixture
def aws_env(monkeypatch, endpoint, tmp_path):
    """Fake credentials and the moto endpoint through the standard AWS environment; no user config leaks in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return endpoint


@pytest.fixture
def raw(aws_env):
    import boto3

    return boto3.client("s3", endpoint_url=aws_env)


@pytest.fixture
def bucket(raw):
    import uuid

    name = f"test-{uuid.uuid4().hex[:12]}"
    raw.create_bucket(Bucket=name)
    return name


def upload_folder(raw, bucket: str, folder, prefix: str) -> str:
    """Every file under `folder` put under s3://bucket/prefix/ (as `aws s3 cp --recursive` would); returns that
    URI, with its trailing slash."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            raw.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}/"
