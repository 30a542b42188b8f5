"""Shards written as streams: each to a local scratch file, uploaded whole once closed (Storage.upload_file:
temp-and-rename locally, a multipart upload on S3), so no shard is ever half there under its final name and
none is ever held in memory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from jobs.storage import Storage


class ShardSeries:
    """shard `first`, first + 1, ... named by `key_of(n)`; `needs_roll(extra)` says to start the next one before
    a write of `extra` bytes would take the open one past `max_bytes` (a single conversation larger than that
    gets a shard of its own). Each committed shard leaves an entry for the dataset's record (shard_plan.py):
    its key, number, the conversations in it and the writer's counts."""

    def __init__(self, dest: Storage, scratch: str, key_of: Callable[[int], str], max_bytes: int, first: int = 0,
                 guard: Callable[[], None] | None = None):
        self.dest, self.scratch, self.key_of, self.max_bytes = dest, scratch, key_of, max_bytes
        self.guard = guard  # raises when this export may no longer write (command.py _datasets_lock)
        self.entries: list[dict] = []
        self.next = first
        self.path: str | None = None
        self.items = 0  # in the open shard
        self.conversations: list[list[str]] = []  # in the open shard: [conversation_id, short source]
        self.counts: dict[str, float] = {}  # in the open shard, as the writer keeps them

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

    def note(self, conversation_id: str, source: str, **counts: float) -> None:
        """(Part of) a conversation goes into the open shard, with what it adds to the writer's counts (call
        after any roll for it)."""
        if not self.conversations or self.conversations[-1][0] != conversation_id:
            self.conversations.append([conversation_id, source])
        for name, n in counts.items():
            self.counts[name] = self.counts.get(name, 0) + n

    def commit(self) -> None:
        """Upload the open shard (already closed by its writer) under its final name."""
        if self.path is None:
            return
        key = self.key_of(self.next)
        try:
            if self.guard is not None:
                self.guard()
            self.dest.upload_file(key, self.path)
        finally:
            os.unlink(self.path)
            self.path = None
        self.entries.append({"key": key, "number": self.next, **self.counts, "conversations": self.conversations})
        self.next += 1
        self.conversations, self.counts = [], {}

    def discard(self) -> None:
        if self.path:
            os.unlink(self.path)
            self.path = None


def remove_stale(dest: Storage, prefix: str, keep: list[str], is_shard: Callable[[str], bool]) -> None:
    """Delete shards this export's record does not name (written again elsewhere, or a killed export's): after
    the new ones and the record are up, so a reader never finds fewer shards than a whole export."""
    kept = set(keep)
    for key in dest.list(prefix):
        if is_shard(key) and key not in kept:
            dest.delete(key)
