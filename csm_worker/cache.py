"""Where csm-render keeps what it builds once per machine: model presets, the C top-k, local copies of S3 models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder; CSM_RENDER_CACHE overrides (tests point it at a temporary folder)."""
    env = os.environ.get("CSM_RENDER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "csm-render"
