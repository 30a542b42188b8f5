"""Which shards a re-export keeps (jobs/export/shard_plan.py): unchanged ones, never half a conversation."""

from __future__ import annotations

from jobs.export.shard_plan import plan_shards, shard_number, usable_entries


def shard(number: int, *conversations: str) -> dict:
    return {"key": f"shard-{number:06d}.tar", "number": number, "conversations": [[c, f"h-{c}"] for c in conversations]}


SHARDS = [shard(0, "a", "b"), shard(1, "c", "d"), shard(2, "d", "e"), shard(3, "f")]  # "d" spans 1 and 2
SOURCES = {c: f"h-{c}" for c in "abcdef"}
PRESENT = [e["key"] for e in SHARDS]


def test_an_unchanged_dataset_keeps_every_shard_and_numbers_new_ones_after_them():
    plan = plan_shards(SHARDS, {**SOURCES, "g": "h-g"}, PRESENT)
    assert plan.kept == SHARDS and plan.todo == {"g"} and plan.first == 4


def test_a_changed_conversation_rewrites_its_shard_and_every_shard_sharing_a_conversation_with_it():
    plan = plan_shards(SHARDS, {**SOURCES, "e": "h-new"}, PRESENT)  # shard 2 changes; "d" pulls shard 1 with it
    assert [e["number"] for e in plan.kept] == [0, 3] and plan.todo == {"c", "d", "e"} and plan.first == 4


def test_a_conversation_gone_rewrites_its_shard_without_it():
    plan = plan_shards(SHARDS, {c: h for c, h in SOURCES.items() if c != "a"}, PRESENT)
    assert [e["number"] for e in plan.kept] == [1, 2, 3] and plan.todo == {"b"}


def test_new_shards_are_numbered_after_every_shard_file_there_even_when_nothing_is_kept():
    """A rebuild (nothing kept, or other settings) never overwrites a file a record or a reader may still use,
    nor a killed export's leftover (shard 7 below, named by no record)."""
    plan = plan_shards(SHARDS, {c: "h-new" for c in SOURCES}, PRESENT + ["shard-000007.tar"])
    assert plan.kept == [] and plan.todo == set(SOURCES) and plan.first == 8
    assert plan_shards(None, SOURCES, PRESENT).first == 4
    assert plan_shards(None, SOURCES, []).first == 0  # a first export


def test_a_recorded_shard_whose_file_is_gone_is_written_again():
    plan = plan_shards(SHARDS, SOURCES, [k for k in PRESENT if k != "shard-000000.tar"])
    assert [e["number"] for e in plan.kept] == [1, 2, 3] and plan.todo == {"a", "b"}


def test_shard_numbers_come_from_their_names():
    assert [shard_number(k) for k in ("hf/data/train-000012.parquet", "webdataset/shard-000003.tar",
                                      "webdataset/notes.tar")] == [12, 3, None]


def test_only_a_record_of_the_same_settings_and_format_is_used():
    record = {"settings": "s1", "shards": SHARDS, "splits": {"train": {"shards": SHARDS[:1]}}}
    assert usable_entries(record, "s1") == SHARDS
    assert usable_entries(record, "s1", ("splits", "train")) == SHARDS[:1]
    assert usable_entries(record, "s1", ("splits", "validation")) is None
    assert usable_entries(record, "s2") is None  # another shard size, split or license
    assert usable_entries({"settings": "s1", "shards": ["webdataset/shard-000000.tar"]}, "s1") is None  # old format
    assert usable_entries(None, "s1") is None
