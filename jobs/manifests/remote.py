"""Manifests on S3: copied to a temporary folder so validation reads them like local files (by record batches).

A manifest's relative `audio` paths resolve against the manifest's own folder, which for an S3 manifest is its
S3 prefix: after loading, such paths are mapped back from the temporary copy to `s3://` URIs, which the workers
read. Recordings on S3 are not opened during validation (a missing one fails its conversation when rendered).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from contextlib import contextmanager


def is_remote(arg: str) -> bool:
    return arg.startswith("s3://")


class Localized:
    """Local copies of the s3:// manifests among `args`, and the way back to S3 names."""

    def __init__(self, args: list[str], roots: dict[str, str]):
        self.args = args  # what to validate: local paths, copies in place of s3:// arguments
        self.roots = roots  # local copy folder -> the s3:// prefix it mirrors
        self.has_remote = bool(roots)

    def name(self, path: str) -> str:
        """The s3:// URI of a path inside a copy; other paths unchanged."""
        real = os.path.realpath(path) if path else path
        for local, base in self.roots.items():
            if real.startswith(local + os.sep):
                return f"{base}/{os.path.relpath(real, local).replace(os.sep, '/')}"
        return path

    def problems(self, problems: list) -> list:
        return [dataclasses.replace(p, file=self.name(p.file)) for p in problems] if self.roots else problems


@contextmanager
def local_manifests(args: list[str], endpoint_url: str | None = None):
    """Yields a Localized view of `args`; the copies live until the block ends."""
    if not any(is_remote(a) for a in args):
        yield Localized(list(args), {})
        return
    with tempfile.TemporaryDirectory(prefix="csm-render-manifests-") as tmp:
        roots: dict[str, str] = {}
        local_args = [_download(a, os.path.join(tmp, str(i)), endpoint_url, roots) if is_remote(a) else a
                      for i, a in enumerate(args)]
        yield Localized(local_args, roots)


def _download(uri: str, folder: str, endpoint_url: str | None, roots: dict[str, str]) -> str:
    from jobs.storage.s3 import S3Storage

    prefix, _, name = uri.rstrip("/").rpartition("/")
    single = name.endswith(".parquet")
    base = prefix if single else uri.rstrip("/")
    storage = S3Storage(base, endpoint_url=endpoint_url)
    keys = [name] if single else [k for k in storage.list() if k.endswith(".parquet")]
    for key in keys:
        path = os.path.join(folder, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(storage.read_bytes(key))
    os.makedirs(folder, exist_ok=True)
    roots[os.path.realpath(folder)] = base
    return os.path.join(folder, name) if single else folder
