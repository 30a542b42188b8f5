"""`csm-render status` sums from OUT alone: real files in a local OUT, a real manifest; no Ray."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.status import job_status
from tests.jobs.test_outputs import rendered, storage, writer  # noqa: F401 (the same local OUT fixtures)

SPF = 1920  # samples per frame at 24 kHz: a turn of n frames lasts n * 0.08 s


def commit(writer, cid, frames_by_turn: dict[int, int]) -> list[dict]:
    return [writer.commit_turn(rendered(cid, i, frames=n), 0.9, 50, None) for i, n in frames_by_turn.items()]


def manifest(tmp_path, turns_by_conversation: dict[str, int]) -> list[str]:
    rows = [(cid, i) for cid, n in turns_by_conversation.items() for i in range(n)]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"conversation_id": [c for c, _ in rows], "turn_index": [i for _, i in rows],
                             "speaker": [i % 2 for _, i in rows], "text": [f"turn {i}" for _, i in rows]}), path)
    return [str(path)]


def test_audio_counts_every_committed_turn_once(storage, writer):
    """Finished conversations from their metadata, unfinished ones from their commit records, and a metadata file
    that lacks a committed turn (an earlier failed attempt's) topped up from the record: each turn once."""
    writer.write_metadata("done", commit(writer, "done", {0: 2, 1: 3}))  # 5 frames
    commit(writer, "running", {0: 4})  # 4 frames, no metadata yet
    partial = commit(writer, "resumed", {0: 1})
    writer.write_metadata("resumed", partial)
    commit(writer, "resumed", {1: 6})  # 1 + 6 frames; its file has only turn 0

    status = job_status(storage)

    assert status.turns_done == 5
    assert status.conversations_done == 2  # without the manifest: conversations with a metadata file
    assert status.audio_seconds == pytest.approx((5 + 4 + 7) * SPF / 24_000)


def test_a_complete_conversation_with_a_stale_failure_record_is_done(storage, writer, tmp_path):
    """A conversation that failed, then was completed by a run killed before it cleared the record: with the
    manifest, status counts it done, not failed (the next run clears the record)."""
    commit(writer, "c", {0: 1, 1: 1})
    writer.write_failure("c", "StorageError", "turn 1: cannot write outputs", attempts=1, turns_committed=1)
    commit(writer, "d", {0: 1})
    writer.write_failure("d", "StorageError", "turn 1: cannot write outputs", attempts=1, turns_committed=1)

    status = job_status(storage, manifest(tmp_path, {"c": 2, "d": 2}))

    assert (status.conversations_done, status.conversations_failed, status.conversations_pending) == (1, 1, 0)
    assert list(status.failures) == ["d"] and status.turns_pending == 1


def test_turns_that_failed_the_quality_checks_are_counted_and_the_worst_listed(storage, writer):
    from csm_worker.quality.checks import TurnQuality

    def qc(cid, idx, *failed, attempts=1):
        turn = rendered(cid, idx)
        turn.quality, turn.attempts = TurnQuality(failed), attempts
        return writer.commit_turn(turn, 0.9, 50, None)

    writer.write_metadata("a", [qc("a", 0, attempts=2), qc("a", 1, "too_slow", attempts=3),
                                qc("a", 2, "max_length", "trailing_silence")])
    qc("b", 0, "clipping")  # no metadata yet: read from its commit record
    qc("b", 1, attempts=2)
    writer.write_metadata("old", commit(writer, "old", {0: 1}))  # rows written without checks count as unchecked

    status = job_status(storage)

    assert sorted(status.qc_failed) == [("a", 1, "too_slow"), ("a", 2, "max_length,trailing_silence"),
                                        ("b", 0, "clipping")]
    assert (status.qc_retried, status.qc_rescued) == (3, 2)  # a/0 and b/1 passed on a later attempt, a/1 never
    lines = status.text().splitlines()
    assert ("quality: 3 of 6 turns failed the checks "
            "(`run --rerender-failed` renders them again); the worst:") in lines
    assert "re-rendered: 3 turns failed a first attempt; 2 of them passed on a later one" in lines
    worst = [line for line in lines if line.startswith("QC ")]
    assert worst == ["QC a/2: max_length,trailing_silence", "QC a/1: too_slow", "QC b/0: clipping"]


def test_metadata_written_before_the_checks_existed_still_reads(storage, writer):
    # An OUT from before the qc columns: status reads its durations and finds no failed checks.
    rows = commit(writer, "legacy", {0: 2})
    table = pa.Table.from_pylist(rows).drop_columns(["qc_status", "qc_failed", "qc_attempts"])
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    storage.write_bytes("metadata/legacy.parquet", buf.getvalue().to_pybytes())
    status = job_status(storage)
    assert status.turns_done == 1 and status.qc_failed == []
    assert status.audio_seconds == pytest.approx(2 * SPF / 24_000)
