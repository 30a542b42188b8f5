"""Which dataset shards an export keeps and which conversations it writes again: a grown job's datasets gain
shards for what is new instead of being rebuilt whole.

Each dataset's record (`<kind>/_export.json`) lists its shards, and in each the conversations it holds with
their metadata hash (a conversation re-rendered has a new one). A shard stays, untouched, while its file is
there and every conversation in it is still complete and unchanged; a shard holding one that changed or went
away is written again with its others, and new conversations go into new shards. Another shard size, split or
license rebuilds the dataset whole. New shards are always numbered after every shard file in DEST, so a build
never overwrites a file that a record, a reader or a killed export's leftovers may still refer to; after the
new record is up, the files it does not name are removed (on every export, so a kill between the two is
mended by the next one).

An hf shard holds whole conversations; a webdataset shard rolls between samples, so a conversation may span two.
Shards that share a conversation are kept or written again together, so keeping a shard never keeps half a
conversation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SOURCE_CHARS = 16  # of a metadata hash: enough to tell a re-rendered conversation, small in a 1M-entry record


def short(source: str) -> str:
    return source[:SOURCE_CHARS]


@dataclass
class ShardPlan:
    kept: list[dict] = field(default_factory=list)  # the record's entries of shards left as they are
    todo: set[str] = field(default_factory=set)  # conversations to write into new shards
    first: int = 0  # the number of the first new shard


def plan_shards(entries: list[dict] | None, sources: dict[str, str], present: list[str]) -> ShardPlan:
    """`entries`: the shards a previous export with the same settings recorded (None: none usable);
    `sources`: every complete conversation's short metadata hash; `present`: the shard files in DEST."""
    first = 1 + max((n for n in map(shard_number, present) if n is not None), default=-1)
    if not entries:
        return ShardPlan(todo=set(sources), first=first)
    there = set(present)
    ok = [e["key"] in there and all(sources.get(cid) == src for cid, src in e["conversations"]) for e in entries]
    while True:  # a conversation also in a shard written again is written again whole: drop its other shards
        redone = {cid for e, good in zip(entries, ok) if not good for cid, _ in e["conversations"]}
        still = [good and not any(cid in redone for cid, _ in e["conversations"]) for e, good in zip(entries, ok)]
        if still == ok:
            break
        ok = still
    kept = [e for e, good in zip(entries, ok) if good]
    held = {cid for e in kept for cid, _ in e["conversations"]}
    return ShardPlan(kept, set(sources) - held, first)


def shard_number(key: str) -> int | None:
    """The number in a shard's name (".../train-000012.parquet", ".../shard-000003.tar")."""
    stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
    digits = stem.rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else None


def recorded_keys(record: dict | None, path: tuple[str, ...] = ()) -> list[str] | None:
    """Every shard key the record lists at `path` (each split for hf), whatever its settings; None when it
    lists none in this format."""
    entries = _entries_at(record, path, "key")
    return None if entries is None else [e["key"] for e in entries]


def usable_entries(record: dict | None, settings: str, path: tuple[str, ...] = ()) -> list[dict] | None:
    """The shard entries of `record` at `path` (e.g. ("splits", "train")) if it was written with `settings`
    and in this format; None otherwise (an older export's record, or other settings: rebuild whole)."""
    if not record or record.get("settings") != settings:
        return None
    return _entries_at(record, path, "conversations")


def _entries_at(record: dict | None, path: tuple[str, ...], field_name: str) -> list[dict] | None:
    """The record's shard entries at `path`, if each is a dict with `field_name`; None otherwise."""
    node = record or {}
    for step in path:
        node = node.get(step) or {}
    entries = node.get("shards")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and field_name in e for e in entries):
        return None
    return entries
