"""`--model s3://bucket/prefix/`: a model folder in the hub format on S3, downloaded once per node.

csm_worker loads hub ids and local folders; this module turns an S3 prefix into a local folder first. Every worker
on a node shares one copy under the cache folder (CSM_RENDER_CACHE, as presets): the first to arrive downloads it
while the others wait on a file lock, and the copy appears under its final name only when complete.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from csm_worker.loading import TOKENIZER_PATTERNS
from csm_worker.presets import cache_root

_COMPLETE = ".csm-render-complete"  # written last into a finished copy


def is_s3_model(model: str) -> bool:
    return model.startswith("s3://")


def local_model(model: str, endpoint_url: str | None = None, tokenizer_only: bool = False) -> str:
    """`model` as csm_worker can load it: an s3:// prefix becomes the path of its local copy, anything else is
    returned unchanged. `tokenizer_only` fetches just the small files the driver needs to count text positions."""
    if not is_s3_model(model):
        return model
    uri = model.rstrip("/")
    name = hashlib.sha256(uri.encode()).hexdigest()[:16] + ("-tokenizer" if tokenizer_only else "")
    final = cache_root() / "s3-models" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other workers of this node wait here while one downloads
        if not (final / _COMPLETE).exists():
            _download(uri, final, endpoint_url, TOKENIZER_PATTERNS if tokenizer_only else None)
    return str(final)


def _download(uri: str, final: Path, endpoint_url: str | None, patterns: list[str] | None) -> None:
    from jobs.storage.s3 import S3Storage

    storage = S3Storage(uri, endpoint_url=endpoint_url)
    keys = [k for k in storage.list() if patterns is None or any(fnmatch.fnmatch(k.rsplit("/", 1)[-1], p)
                                                                    for p in patterns)]
    if "config.json" not in keys:
        from csm_worker.loading import ModelLoadError

        raise ModelLoadError(f"{uri} has no config.json: point --model at a prefix holding a model saved in the "
                             "hub format (config.json, *.safetensors, tokenizer files)")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        for key in keys:
            path = tmp.joinpath(*key.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            storage.download(key, str(path))
        (tmp / _COMPLETE).touch()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
