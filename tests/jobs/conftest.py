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
    from csm_worker import presets

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
    CompletedProcess with text stdout/stderr."""

    def run(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=cwd, env=dict(os.environ),
                              capture_output=True, text=True, timeout=timeout)

    return run
