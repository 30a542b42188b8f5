"""webdataset kind: tar shards (webdataset/shard-000000.tar, ...) of bounded size, one sample per rendered turn:
<conversation_id>/<turn_index>.wav (or .flac, the job's file as it is) and .json (its metadata row).

The key is "<conversation_id>/<turn>" rather than "<conversation_id>.<turn>": webdataset splits a member's name
into key and extension at the first dot of its base name, so a dot between the two would make the turn index
part of the extension (every turn of a conversation one sample), and conversation ids may hold dots themselves.
Members are written in a fixed order (conversations by id, turns by index) with fixed owner, mode and time, so
the same OUT gives byte-identical shards. Shards roll between samples, so a conversation may span two; the
record names it in both, and a grown job's export keeps or rewrites such shards together (shard_plan.py).
"""

from __future__ import annotations

import io
import json
import tarfile

from jobs.disclosure import disclosure
from jobs.storage import Storage

from jobs.export.shard_plan import ShardPlan, short
from jobs.export.shards import ShardSeries

PREFIX = "webdataset/"


def shard_key(n: int) -> str:
    return f"{PREFIX}shard-{n:06d}.tar"


def is_shard(key: str) -> bool:
    return key.startswith(f"{PREFIX}shard-") and key.endswith(".tar")


def _member_bytes(size: int) -> int:
    return 512 * 3 + -(-size // 512) * 512  # header, a pax header for long names, the data padded to blocks


class TarShards:
    def __init__(self, dest: Storage, scratch: str, max_bytes: int, plan: ShardPlan | None = None, guard=None):
        self.plan = plan or ShardPlan()
        self.series = ShardSeries(dest, scratch, shard_key, max_bytes, self.plan.first, guard)
        self.tar: tarfile.TarFile | None = None
        self.samples = sum(int(e.get("samples", 0)) for e in self.plan.kept)

    def wants(self, conversation_id: str) -> bool:
        return conversation_id in self.plan.todo

    def add_conversation(self, conversation_id: str, source: str, samples: list[tuple[str, dict[str, bytes]]]
                         ) -> None:
        """A conversation's samples: (key, files), files mapping an extension ("wav", "json") to bytes."""
        for key, files in samples:
            self.add(key, files, conversation_id, short(source))

    def add(self, key: str, files: dict[str, bytes], conversation_id: str, source: str) -> None:
        extra = sum(_member_bytes(len(data)) for data in files.values())
        if self.series.needs_roll(extra + 1024 + 10240):  # room left for the end-of-archive blocks and padding
            self._close_shard()
        if self.tar is None:
            self.tar = tarfile.open(self.series.open_path(), "w", format=tarfile.PAX_FORMAT)
        self.series.note(conversation_id, source, samples=1)
        for ext, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.tar.fileobj.flush()
        self.series.items += 1
        self.samples += 1

    def _close_shard(self) -> None:
        if self.tar is not None:
            self.tar.close()
            self.tar = None
            self.series.commit()

    def finish(self) -> list[dict]:
        """Close the last shard; the record's entries, kept and new."""
        self._close_shard()
        return self.plan.kept + self.series.entries

    def abort(self) -> None:
        if self.tar is not None:
            self.tar.close()
        self.series.discard()


def sample_files(row: dict, audio: bytes) -> dict[str, bytes]:
    ext = row["audio_path"].rsplit(".", 1)[-1]
    said = {**row, "synthetic": True, "disclosure": disclosure(row.get("model") or "an unknown model", row)}
    return {ext: audio, "json": json.dumps(said, sort_keys=True, ensure_ascii=False).encode()}


def sample_key(row: dict) -> str:
    return f"{row['conversation_id']}/{row['turn_index']:06d}"
