"""Exactly one metadata row per committed turn, whatever crashed when: the order of failure records and metadata
files, and what the next run's repair rewrites. Real files in a local OUT; no Ray."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from jobs.storage import layout
from jobs.cluster.driver import Driver
from jobs.storage.outputs import OutputWriter, committed_turns
from jobs.manifests.manifest import ConversationSpec, TurnSpec
from jobs.runner import Summary, in_memory_work, repair_metadata
from jobs.storage import LocalStorage
from tests.jobs.test_outputs import rendered


class RecordingStorage(LocalStorage):
    """A local OUT that remembers the order of its writes and deletes."""

    def __init__(self, root):
        super().__init__(root)
        self.log: list[tuple[str, str]] = []

    def write_bytes(self, key, data):
        self.log.append(("write", key))
        super().write_bytes(key, data)

    def delete(self, key):
        self.log.append(("delete", key))
        super().delete(key)


@pytest.fixture
def storage(tmp_path):
    return RecordingStorage(tmp_path / "out")


@pytest.fixture
def writer(storage):
    return OutputWriter(storage, "wav", "random:tiny")


def commit(writer, cid, *turns) -> list[dict]:
    return [writer.commit_turn(rendered(cid, i), temperature=0.9, top_k=50, pause_ms=None) for i in turns]


def metadata_turns(storage, cid) -> list[int]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(layout.metadata_key(cid))))
    return table.column("turn_index").to_pylist()


def repair(storage, writer, complete):
    repair_metadata(storage, writer, complete, committed_turns(storage))


def test_a_failed_conversation_completed_by_a_killed_run_gets_all_its_rows(storage, writer):
    """Run 1 commits turn 0, fails on turn 1 (metadata: 1 row, failure record); run 2 commits turns 1 and 2 and is
    killed before it writes the metadata. Run 3 finds the conversation complete: it must rewrite the 1-row file
    and clear the stale failure."""
    rows = commit(writer, "c", 0)
    writer.write_failure("c", "StorageError", "turn 1: cannot write outputs", attempts=1, turns_committed=1)
    writer.write_metadata("c", rows)
    commit(writer, "c", 1, 2)  # run 2, killed before its metadata

    repair(storage, writer, ["c"])

    assert metadata_turns(storage, "c") == [0, 1, 2]
    assert not storage.exists(layout.failure_key("c"))


def test_a_complete_conversation_without_metadata_gets_it(storage, writer):
    commit(writer, "c", 0, 1)  # killed between the last commit and the metadata file
    repair(storage, writer, ["c"])
    assert metadata_turns(storage, "c") == [0, 1]


def test_whole_metadata_files_are_left_alone(storage, writer):
    """Repair costs nothing for conversations finished normally: no read, no write."""
    writer.write_metadata("c", commit(writer, "c", 0, 1))
    storage.log.clear()
    repair(storage, writer, ["c"])
    assert storage.log == []


def test_conversations_with_work_left_are_not_repaired(storage, writer):
    """Only complete conversations are repaired: one with turns left is rendered again, which writes its file."""
    writer.write_failure("c", "Error", "boom", attempts=1, turns_committed=1)
    writer.write_metadata("c", commit(writer, "c", 0))
    turns = [TurnSpec("c", i, i % 2, f"turn {i}") for i in range(2)]
    work = in_memory_work([ConversationSpec("c", turns)], committed_turns(storage))
    storage.log.clear()
    repair(storage, writer, work.complete_ids())
    assert storage.log == [] and work.work_conversations == 1


class _Progress:
    def conversation(self, failed: bool) -> None:
        pass


def test_the_driver_gives_a_conversation_its_workers_died_on_its_rows_after_its_failure_record(storage, writer):
    commit(writer, "c", 0, 1)
    storage.log.clear()
    summary = Summary()
    driver = Driver(None, {}, None, writer, _Progress(), summary, iter([]), check=lambda: None)

    driver._fail("c", "WorkerLost", "its worker died 3 time(s)", attempts=3)

    assert storage.log == [("write", layout.failure_key("c")), ("write", layout.metadata_key("c"))]
    assert metadata_turns(storage, "c") == [0, 1]
    assert "c" in summary.failed
