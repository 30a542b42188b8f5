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

from csm_worker.model import checkpoint
from csm_worker.model.loading import TOKENIZER_PATTERNS
from csm_worker.cache import cache_root

_COMPLETE = ".csm-render-complete"  # written last into a finished copy


def is_s3_model(model: str) -> bool:
    return model.startswith("s3://")


def local_model(model: str, endpoint_url: str | None = None, tokenizer_only: bool = False,
                patterns: list[str] | None = None) -> str:
    """`model` as csm_worker can load it: an s3:// prefix becomes the path of its local copy, anything else is
    returned unchanged. `tokenizer_only` fetches just the small files the driver needs to count text positions.
    `patterns`: a model that is no CSM checkpoint (the watermark's weights): just the files matching them."""
    if not is_s3_model(model):
        return model
    uri = model.rstrip("/")
    suffix = "-tokenizer" if tokenizer_only else ""
    if patterns:
        suffix = "-" + hashlib.sha256("\n".join(patterns).encode()).hexdigest()[:8]
    name = hashlib.sha256(uri.encode()).hexdigest()[:16] + suffix
    final = cache_root() / "s3-models" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other workers of this node wait here while one downloads
        if not (final / _COMPLETE).exists():
            if patterns:
                _download_files(uri, final, endpoint_url, patterns)
            else:
                _download(uri, final, endpoint_url, TOKENIZER_PATTERNS if tokenizer_only else None)
    return str(final)


def _download(uri: str, final: Path, endpoint_url: str | None, patterns: list[str] | None) -> None:
    """The small files, then (unless `patterns` asks for less) only the weight files they name: a copy of the
    hub repo keeps its original-layout `model.safetensors` and `ckpt.pt`, which are never loaded."""
    from jobs.storage.s3 import S3Storage

    storage = S3Storage(uri, endpoint_url=endpoint_url)
    keys = storage.list()
    if "config.json" not in keys:
        from csm_worker.errors import ModelLoadError

        raise ModelLoadError(f"{uri} has no config.json: point --model at a prefix holding a model saved in the "
                             "hub format (config.json, *.safetensors, tokenizer files)")

    def fill(tmp: Path) -> None:
        _fetch(storage, _matching(keys, patterns or checkpoint.SMALL_PATTERNS), tmp)
        if patterns is None:
            _fetch(storage, _matching(keys, checkpoint.weight_files(tmp)), tmp)

    _publish(final, fill)


def _download_files(uri: str, final: Path, endpoint_url: str | None, patterns: list[str]) -> None:
    from jobs.storage.s3 import S3Storage

    storage = S3Storage(uri, endpoint_url=endpoint_url)
    keys = _matching(storage.list(), patterns)
    if not keys:
        from csm_worker.errors import ModelLoadError

        raise ModelLoadError(f"{uri} holds no file matching {', '.join(patterns)}")
    _publish(final, lambda tmp: _fetch(storage, keys, tmp))


def _publish(final: Path, fill) -> None:
    """`fill` a temporary folder beside `final`, then rename it there whole: no half copy under the final name."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        fill(tmp)
        (tmp / _COMPLETE).touch()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _matching(keys: list[str], patterns: list[str]) -> list[str]:
    return [k for k in keys if any(fnmatch.fnmatch(k, p) for p in patterns)]


def _fetch(storage, keys: list[str], folder: Path) -> None:
    for key in keys:
        path = folder.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.download(key, str(path))
