"""CPU decode steps split by rows over worker threads (`csm_worker.backends.cpu.row_split`): same codes, own thread
settings."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from csm_worker import ConversationRequest, TurnRequest
from csm_worker.backends.cpu import row_split
from csm_worker.backends.cpu.row_split import MIN_ROWS, RowSplit, _pool, blocks


@pytest.mark.parametrize("rows,workers", [(1, 2), (7, 2), (16, 2), (17, 2), (64, 2), (64, 3), (64, 16), (9, 1)])
def test_blocks_cover_the_rows_in_order_and_are_not_too_thin(rows, workers):
    got = blocks(rows, workers)
    assert got[0][0] == 0 and got[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
    assert 1 <= len(got) <= workers
    if len(got) > 1:
        assert min(hi - lo for lo, hi in got) >= MIN_ROWS
        assert max(hi - lo for lo, hi in got) - min(hi - lo for lo, hi in got) <= 1
    if rows >= 2 * MIN_ROWS and workers >= 2:
        assert len(got) >= 2


def test_workers_run_on_one_intra_op_thread_and_leave_the_callers_setting():
    before = torch.get_num_threads()
    seen = list(_pool(3).map(lambda _: torch.get_num_threads(), range(6)))
    assert seen == [1] * 6
    assert torch.get_num_threads() == before
    assert [p.tolist() for p in RowSplit(0).run(lambda lo, hi: torch.arange(lo, hi), 5)] == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("split_cost,best,far", [(2.0, 3, True), (20.0, 1, True), (9.0, 3, False)],
                         ids=["split-much-cheaper", "split-much-dearer", "split-a-little-cheaper"])
def test_the_cheaper_split_is_used_and_the_other_tried_now_and_then(monkeypatch, split_cost, best, far):
    """A fake clock: one block costs 10 per row step, three blocks `split_cost`; a choice's first run costs 100
    more (one-off set-up) and must not count."""
    clock = [0.0]
    lock = threading.Lock()
    monkeypatch.setattr(row_split.time, "perf_counter", lambda: clock[0])
    seen = set()

    def fn(lo, hi):
        n = 1 if hi - lo == 30 else 3
        with lock:
            clock[0] += (10.0 if n == 1 else split_cost) * 30 / n + (100.0 if n not in seen else 0.0)
        return torch.arange(lo, hi)

    split = RowSplit(3)
    used = []
    for _ in range(8 * row_split.PROBE_EVERY):
        parts = split.run(fn, 30)
        seen.add(len(parts))
        assert torch.equal(torch.cat(parts), torch.arange(30))
        used.append(len(parts))
    assert used[:4] == [1, 1, 3, 3]  # each choice: one set-up run, one measured run
    other = 1 if best == 3 else 3
    every = row_split.PROBE_EVERY * (4 if far else 1)
    tried = [step for step, n in enumerate(used, start=1) if step > 4 and n == other]
    assert tried == [step for step in range(5, len(used) + 1) if step % every == 0]
    # 10 rows are too few to split: one block, and nothing is learnt from it.
    before = {n: list(c) for n, c in split.costs.items()}
    assert len(split.run(lambda lo, hi: torch.arange(lo, hi), 10)) == 1
    assert {n: list(c) for n, c in split.costs.items()} == before


def test_split_decode_gives_the_same_codes_as_one_block(render_with):
    """20 conversations (greedy and sampled, turns of unequal length, so rows finish and restart at different
    steps) rendered in one block, inline, and split over 2 and 3 worker threads."""
    convs = lambda: [ConversationRequest(f"r{i}", [
        TurnRequest(t, (i + t) % 2, f"row {i} turn {t}" + " more" * (i % 4), top_k=1 if i % 3 == 0 else 40,
                    temperature=0.8, seed=100 * i + t, max_audio_length_ms=(3 + (i + t) % 4) * 80)
        for t in range(1 + i % 2)]) for i in range(20)]
    runs = {w: render_with(convs(), batch_size=20, workers=w) for w in (0, 1, 2, 3)}
    ref = runs[0]
    assert len(ref) == sum(1 + i % 2 for i in range(20))
    for w, got in runs.items():
        assert sorted(got) == sorted(ref)
        for key in ref:
            np.testing.assert_array_equal(got[key].codes, ref[key].codes, err_msg=f"workers={w} {key}")


@pytest.fixture
def render_with(gen, collect):
    from csm_worker.engine.engine import Engine

    def run(conversations, batch_size, workers):
        engine = Engine(gen.model, gen.codec, gen.loaded.tokenizer, batch_size=batch_size, decode_audio=False,
                        workers=workers)
        turns, dones, _ = collect(engine.run(conversations))
        assert all(d.error is None for d in dones.values())
        return turns

    return run


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_workers():
    RowSplit(2).run(lambda lo, hi: torch.arange(lo, hi), 20)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # child: must not wait forever on the parent's (absent) threads
        try:
            parts = RowSplit(2).run(lambda lo, hi: torch.arange(lo, hi), 20)
            os._exit(0 if torch.equal(torch.cat(parts), torch.arange(20)) else 1)
        finally:
            os._exit(2)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung on the parent's worker pool")


def test_engines_for_the_same_work_share_what_was_learnt(gen):
    from csm_worker.engine.engine import Engine

    make = lambda batch: Engine(gen.model, gen.codec, gen.loaded.tokenizer, batch_size=batch, workers=2)
    a, b, other = make(16), make(16), make(8)
    assert a.split is b.split and a.split is not other.split
    assert RowSplit.shared(2, "k") is RowSplit.shared(2, "k") and RowSplit.shared(3, "k") is not RowSplit.shared(2, "k")
