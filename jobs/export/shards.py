"""Shards written as streams: each to a local scratch file, uploaded whole once closed (Storage.upload_file:
temp-and-rename locally, a multipart upload on S3), so no shard is ever half there under its final name and
none is ever held in memory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from jobs.storage import Storage


class ShardSeries:
    """shard 0, 1, 2, ... named by `key_of(n)`; `roll_if(extra)` starts the next one before a write of `extra`
    bytes would take the open one past `max_bytes` (a single sample larger than that gets a shard of its own)."""

    def __init__(self, dest: Storage, scratch: str, key_of: Callable[[int], str], max_bytes: int):
        self.dest, self.scratch, self.key_of, self.max_bytes = dest, scratch, key_of, max_bytes
        self.keys: list[str] = []
        self.path: str | None = None
        self.items = 0  # in the open shard

    def open_path(self) -> str:
        """The open shard's scratch file (a new shard when none is open)."""
        if self.path is None:
            fd, self.path = tempfile.mkstemp(suffix=".shard", dir=self.scratch)
            os.close(fd)
            self.items = 0
        return self.path

    def size(self) -> int:
        return os.path.getsize(self.path) if self.path else 0

    def needs_roll(self, extra: int) -> bool:
        return self.path is not None and self.items > 0 and self.size() + extra > self.max_bytes

    def commit(self) -> None:
        """Upload the open shard (already closed by its writer) under its final name."""
        if self.path is None:
            return
        key = self.key_of(len(self.keys))
        try:
            self.dest.upload_file(key, self.path)
        finally:
            os.unlink(self.path)
            self.path = None
        self.keys.append(key)

    def discard(self) -> None:
        if self.path:
            os.unlink(self.path)
            self.path = None


def remove_stale(dest: Storage, prefix: str, keep: list[str], is_shard: Callable[[str], bool]) -> None:
    """Delete shards of an earlier export that this one no longer has (it made fewer): after the new ones are
    up, so a reader never finds fewer shards than a whole export."""
    kept = set(keep)
    for key in dest.list(prefix):
        if is_shard(key) and key not in kept:
            dest.delete(key)
