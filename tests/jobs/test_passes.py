"""Re-render passes on a local OUT, without rendering (jobs/plan/passes.py): what a new pass covers, how its
records count, resuming and closing it. The whole path through `csm-render run` is tests/jobs/test_rerender.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from csm_worker.engine.requests import RenderedTurn
from jobs.plan.passes import RenderPass, begin_pass, finish_pass, flagged_turns, open_pass, pass_history, pass_seed
from jobs.storage import layout, open_storage
from jobs.storage.outputs import OutputWriter, committed_turns


@pytest.fixture
def writer(tmp_path):
    return OutputWriter(open_storage(str(tmp_path / "out")), model="random:tiny")


def commit(writer: OutputWriter, cid: str, idx: int, value: int = 0) -> dict:
    """One turn of 2 frames committed through the writer (as the worker does), codes filled with `value`."""
    turn = RenderedTurn(conversation_id=cid, turn_index=idx, speaker=idx % 2, text=f"turn {idx}",
                        audio=np.zeros(3840, np.float32), sample_rate=24_000,
                        codes=np.full((32, 2), value, np.int64), end_reason="eos", seed=idx)
    return writer.commit_turn(turn, 0.9, 50, None)


def finished(writer: OutputWriter, cid: str, statuses: list[str]) -> list[dict]:
    """A finished conversation whose turn i has qc_status statuses[i]."""
    rows = [commit(writer, cid, i) for i in range(len(statuses))]
    for row, status in zip(rows, statuses):
        row["qc_status"], row["qc_failed"] = status, ("mostly_silence" if status == "fail" else None)
    writer.write_metadata(cid, rows)
    return rows


def test_pass_seed_is_the_turns_own_in_pass_one_and_new_after():
    assert pass_seed(41, 1) == 41
    seeds = {pass_seed(41, n) for n in (2, 3, 4)} | {pass_seed(42, 2)}
    assert len(seeds) == 4 and 41 not in seeds and all(0 <= s < 2**63 for s in seeds)
    assert pass_seed(41, 2) == pass_seed(41, 2)


def test_layout_names_a_later_pass_beside_the_first():
    assert layout.commit_key("c", 3) == "commits/c/000003.json"
    assert layout.commit_key("c", 3, 2) == "commits/c/000003.p2.json"
    assert layout.audio_key("c", 3, ".wav", 2) == "audio/c/000003.p2.wav"
    assert layout.parse_commit("commits/c/000003.p2.json") == ("c", 3, 2)
    assert layout.parse_commit("commits/c/000003.json") == ("c", 3, 1)
    assert layout.parse_commit_key("commits/c/000003.p2.json") == ("c", 3)
    for bad in ("commits/c/000003.p1.json", "commits/c/000003.p.json", "commits/c/000003.px.json",
                "commits/c/x.p2.json", "audio/c/000003.p2.json"):
        assert layout.parse_commit(bad) is None, bad


def test_a_new_pass_covers_each_conversation_from_its_first_failed_turn(writer):
    finished(writer, "a", ["pass", "fail", "pass", "fail"])
    finished(writer, "b", ["pass", "pass"])
    finished(writer, "c", ["fail", "pass"])
    finished(writer, "d", ["fail"])
    writer.write_failure("d", "WorkerError", "died", attempts=3, turns_committed=1)  # resumed, not re-rendered
    storage = writer.storage

    new, line = begin_pass(storage, rerender_failed=True)
    assert new.number == 2
    assert dict(new.turns) == {"a": (1, 2, 3), "c": (0, 1)}
    assert new.failed == {"a": {1: "mostly_silence", 3: "mostly_silence"}, "c": {0: "mostly_silence"}}
    assert line == new.describe() and "2 conversations" in line and "3 failed turns, 5 turns" in line
    record = json.loads(storage.read_bytes(layout.pass_key(2)))
    assert RenderPass.from_record(record) == new  # the plan is on OUT before any of its turns renders
    assert open_pass(storage) == new


def test_an_open_pass_is_resumed_with_or_without_the_flag(writer):
    finished(writer, "a", ["fail", "pass"])
    storage = writer.storage
    first, _ = begin_pass(storage, rerender_failed=True)
    finished(writer, "z", ["fail"])  # failed later: not in the open pass, which is resumed as it was planned
    for flag in (True, False):
        again, line = begin_pass(storage, rerender_failed=flag)
        assert again == first and line.startswith("resuming re-render pass 2")


def test_no_failed_turn_no_pass(writer):
    finished(writer, "a", ["pass", "unchecked"])
    assert begin_pass(writer.storage, rerender_failed=True)[0] is None
    assert begin_pass(writer.storage, rerender_failed=False) == (None, "")
    assert not writer.storage.list(layout.PASSES)


def test_a_covered_turn_counts_only_once_its_pass_commits_it(writer):
    finished(writer, "a", ["pass", "fail", "pass"])
    storage = writer.storage
    current, _ = begin_pass(storage, rerender_failed=True)
    assert committed_turns(storage)["a"] == {0, 1, 2}  # outside the pass: every committed turn, once
    assert committed_turns(storage, rerender=current)["a"] == {0}

    in_pass = OutputWriter(storage, model="random:tiny", rerender=current)
    row = commit(in_pass, "a", 1, value=7)
    assert row["render_pass"] == 2 and row["audio_path"] == "audio/a/000001.p2.wav"
    assert row["codes_path"] == "codes/a/000001.p2.npy"
    assert in_pass.committed("a") == {0, 1}
    assert committed_turns(storage)["a"] == {0, 1, 2}  # two records of turn 1, counted once
    assert in_pass.latest_passes("a") == {0: 1, 1: 2}
    assert writer.latest_passes("a") == {0: 1, 1: 2, 2: 1}
    assert np.all(in_pass.load_codes("a", 1, 2) == 7) and np.all(in_pass.load_codes("a", 1) == 0)
    # the first pass's files of turn 1 are still there, as they were
    assert json.loads(storage.read_bytes(layout.commit_key("a", 1)))["render_pass"] == 1

    assert finish_pass(storage, current) == ["a"]  # turn 2 is not rendered again yet: the pass stays open
    assert open_pass(storage) == current
    commit(in_pass, "a", 2, value=8)
    in_pass.write_metadata_from_commits("a", in_pass.committed("a"))
    assert finish_pass(storage, current) == []
    assert open_pass(storage) is None
    assert storage.exists(layout.pass_done_key(2))
    assert pass_history(storage) == [f"{current.describe()}: done"]


def test_metadata_holds_each_turns_latest_record(writer):
    finished(writer, "a", ["fail", "pass"])
    storage = writer.storage
    second, _ = begin_pass(storage, rerender_failed=True)
    in_second = OutputWriter(storage, model="random:tiny", rerender=second)
    commit(in_second, "a", 0, value=2)
    commit(in_second, "a", 1, value=2)
    in_second.write_metadata_from_commits("a", {0, 1})
    finish_pass(storage, second)

    rows = {r["turn_index"]: r for r in flagged_metadata(storage, "a")}
    assert [rows[i]["render_pass"] for i in (0, 1)] == [2, 2]
    # A plain writer (no pass open) reads the same latest records: e.g. runner.repair_metadata after a crash.
    writer.write_metadata_from_commits("a", {0, 1})
    assert [r["codes_path"] for r in flagged_metadata(storage, "a")] == ["codes/a/000000.p2.npy",
                                                                        "codes/a/000001.p2.npy"]


def test_the_next_pass_takes_the_next_number_and_only_what_still_fails(writer):
    finished(writer, "a", ["fail", "pass"])
    finished(writer, "b", ["pass", "fail"])
    storage = writer.storage
    second, _ = begin_pass(storage, rerender_failed=True)
    in_second = OutputWriter(storage, model="random:tiny", rerender=second)
    for cid, idx in (("a", 0), ("a", 1), ("b", 1)):
        commit(in_second, cid, idx)
    # In pass 2, a's turns pass and b's turn 1 fails again.
    for cid, statuses in (("a", ["pass", "pass"]), ("b", ["pass", "fail"])):
        latest = in_second.latest_passes(cid)
        rows = [in_second.read_commit(cid, i, latest[i]) for i in range(2)]
        for row, status in zip(rows, statuses):
            row["qc_status"] = status
        in_second.write_metadata(cid, rows)
    assert finish_pass(storage, second) == []

    third, _ = begin_pass(storage, rerender_failed=True)
    assert third.number == 3 and dict(third.turns) == {"b": (1,)}
    assert flagged_turns(storage)[0] == {"b": (1,)}
    assert len(pass_history(storage)) == 2 and pass_history(storage)[1].endswith("open (the next run resumes it)")


def flagged_metadata(storage, cid: str) -> list[dict]:
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(layout.metadata_key(cid)))).to_pylist()
