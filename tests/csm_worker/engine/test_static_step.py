"""The fixed-shape decode step (`csm_worker.engine.static_step`) and its CUDA-graph runner, on CPU: the same codes as
the dynamic step, buckets, buffers, and functions that read nothing from Python between steps."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from csm_worker.engine.cuda_graphs import WARMUP_RUNS, GraphRunner, preserved
from csm_worker.engine.engine import GRAPHS_ENV, Engine, step_mode
from csm_worker.engine.static_step import BUCKET, StaticStep, length_bucket, row_bucket, top_k_bucket

from ..conftest import sampled_mix_conversations


def test_length_buckets_cover_every_length_up_to_the_window():
    window = 2048
    got = {t: length_bucket(t, window) for t in range(1, window + 1)}
    assert all(t <= b <= min(window, t + BUCKET - 1) for t, b in got.items())
    assert sorted(set(got.values())) == list(range(BUCKET, window + 1, BUCKET))
    assert length_bucket(100, 64) == 64  # a window smaller than a bucket


def test_top_k_buckets_are_powers_of_two_up_to_the_vocabulary():
    assert [top_k_bucket(k, 2051) for k in (1, 2, 3, 50, 64, 65, 1500, 2051, 5000)] == \
        [1, 2, 4, 64, 64, 128, 2048, 2051, 2051]


def codes(render, **engine_args):
    turns, dones, _ = render(sampled_mix_conversations(), batch_size=3, **engine_args)
    assert all(d.error is None for d in dones.values())
    return {k: t.codes for k, t in turns.items()}


def test_static_step_gives_exactly_the_dynamic_steps_codes(render):
    dynamic = codes(render)
    static = codes(render, static=True)
    assert sorted(static) == sorted(dynamic) and len(static) == 8
    for key in dynamic:
        np.testing.assert_array_equal(static[key], dynamic[key], err_msg=str(key))


def test_without_cuda_graphs_fall_back_to_the_same_step_with_a_log_line(render, caplog):
    caplog.set_level(logging.INFO, logger="csm_worker.engine.cuda_graphs")
    graphed = codes(render, graphs=True)
    assert "CUDA graphs off" in caplog.text
    for key, want in codes(render, static=True).items():
        np.testing.assert_array_equal(graphed[key], want, err_msg=str(key))


def test_a_failed_capture_is_logged_and_the_step_runs_eagerly(monkeypatch, caplog):
    runner = GraphRunner("cpu")
    runner.enabled = True  # as on a GPU, where this capture fails

    def no_capture(fn, state):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(runner, "_capture", no_capture)
    ran = []
    fn = runner(("feed", 256), lambda: lambda: ran.append(1), [])
    fn()
    assert ran == [1] and not runner.enabled and not runner.graphs
    assert "capture of ('feed', 256) failed" in caplog.text and "not permitted" in caplog.text


class Recorder:
    """A stand-in for GraphRunner: makes each bucket's function once (as a capture would) and counts them."""

    def __init__(self):
        self.made: list[tuple] = []
        self.states: list[list[torch.Tensor]] = []

    def __call__(self, key, make, state):
        self.made.append(key)
        self.states.append(state)
        return make()


def test_each_buckets_function_is_made_once_and_replayed_with_only_its_buffers(bgen, render, collect):
    """Replays must not depend on Python state that changes between steps: each function is made once, on the
    first step that needs it, and serves every later step, of other rows and turns, with only the buffers
    changed. Were a function to keep a value from when it was made (a position, a row's settings), the codes
    below would differ from the dynamic step's."""
    recorder = Recorder()
    engine = Engine(bgen.model, bgen.codec, bgen.loaded.tokenizer, batch_size=3, decode_audio=False, static=True)
    engine.static.run_fn = recorder

    turns, _, _ = collect(engine.run(sampled_mix_conversations()))
    assert len(recorder.made) == len(set(recorder.made)), "a bucket's function was made twice"
    kinds = {kind for kind, _, _ in recorder.made}
    assert kinds == {"sample", "feed"}
    made = {(kind, bucket) for kind, _, bucket in recorder.made}
    assert ("feed", 256) in made and ("feed", 512) in made  # "c"'s 300 positions
    assert ("sample", 64) in made and ("sample", 2051) in made  # top_k 50, and 2051 of 2051
    # What a capture's warm-up must give back: h and the step buffers, by identity (not copies).
    assert recorder.states[0][0] is engine.h and recorder.states[0][1] is engine.static.buf.pos
    want = codes(render)
    for key in want:
        np.testing.assert_array_equal(turns[key].codes, want[key], err_msg=str(key))


def test_rows_buffers_follow_turns_and_free_rows_are_inert(gen):
    m = gen.model
    step = StaticStep(m, m.new_caches(2), torch.zeros(2, m.dim))
    step.start_turn(1, pos=17, temperature=0.0, top_k=50, seed=9)
    b = step.buf
    assert b.active.tolist() == [False, True] and b.pos.tolist() == [0, 17]
    assert b.top_k.tolist() == [1, 1] and b.temperature[1] == pytest.approx(1e-5)  # temperature 0: greedy
    step.run(t_len=18, max_top_k=1)
    step.run(t_len=19, max_top_k=1)
    assert b.pos.tolist() == [0, 19] and b.frame_index.tolist() == [0, 2]  # advanced on the device
    step.free(1)
    assert b.active.tolist() == [False, False] and b.pos.tolist() == [0, 0] and b.seed.tolist() == [0, 0]


def test_a_captures_warm_up_runs_change_no_result(bgen, render, collect):
    """A capture first runs the function WARMUP_RUNS times for real (cuda_graphs.py), mid-run when a new bucket
    is first needed. Emulated here on CPU: the codes stay the dynamic step's, so restoring h and the buffers is
    enough and the KV-cache writes of the trial runs (at positions ahead of each row's own) need no undoing."""
    warmed = []

    def warming_runner(key, make, state):
        fn = make()
        with preserved(state):
            for _ in range(WARMUP_RUNS):
                fn()
        warmed.append(key)
        return fn

    engine = Engine(bgen.model, bgen.codec, bgen.loaded.tokenizer, batch_size=3, decode_audio=False, static=True)
    engine.static.run_fn = warming_runner
    turns, _, _ = collect(engine.run(sampled_mix_conversations()))
    assert len(warmed) >= 4  # buckets first needed mid-run, with rows mid-turn
    want = codes(render)
    for key in want:
        np.testing.assert_array_equal(turns[key].codes, want[key], err_msg=str(key))


def test_preserved_restores_state_when_a_capture_fails():
    x, y = torch.arange(4), torch.ones(2, 3)
    with pytest.raises(RuntimeError):
        with preserved([x, y]):
            x.add_(5)
            y.zero_()
            raise RuntimeError("capture failed")
    assert x.tolist() == [0, 1, 2, 3] and y.sum() == 6


def test_step_mode_defaults_to_graphs_on_cuda_only_and_has_a_switch(monkeypatch):
    monkeypatch.delenv(GRAPHS_ENV, raising=False)
    assert step_mode("cuda", None, None) == (True, True)
    assert step_mode("cpu", None, None) == (False, False)
    assert step_mode("cpu", True, None) == (True, False)
    assert step_mode("cpu", None, True) == (True, True)  # graphs replay the static step
    assert step_mode("cuda", False, False) == (False, False)
    monkeypatch.setenv(GRAPHS_ENV, "0")
    assert step_mode("cuda", None, None) == (True, False)


def tail_conversations():
    """A job's tail in 8 slots: six one-frame conversations finish at once, leaving rows 5 and 7 mid-turn (one
    sampled, one greedy, two turns each, so a moved row also starts a turn where it landed)."""
    from csm_worker import ConversationRequest, TurnRequest

    t = lambda i, text, frames, k, seed=0: TurnRequest(i, i % 2, text, top_k=k, seed=seed,
                                                       max_audio_length_ms=frames * 80)
    short = [ConversationRequest(f"s{i}", [t(0, f"Short {i}", 1, 50, seed=i)]) for i in range(5)]
    return [*short, ConversationRequest("long5", [t(0, "The fifth slot runs on", 6, 50, seed=55),
                                                  t(1, "and again", 4, 50, seed=56)]),
            ConversationRequest("s6", [t(0, "Short 6", 1, 1)]),
            ConversationRequest("long7", [t(0, "The last slot, greedy", 9, 1), t(1, "Two", 3, 1)])]


@pytest.mark.parametrize("static", [False, True])
def test_a_jobs_tail_moves_to_the_lowest_rows_and_keeps_its_codes(bgen, render, collect, static):
    """When few conversations are left, the engine moves them into the lowest free rows so a step runs only a
    power-of-two bucket of rows (the static step's functions are keyed by it): the codes stay those of each
    conversation rendered alone."""
    recorder = Recorder()
    engine = Engine(bgen.model, bgen.codec, bgen.loaded.tokenizer, batch_size=8, decode_audio=False,
                    static=static)
    if static:
        engine.static.run_fn = recorder
    turns, dones, _ = collect(engine.run(tail_conversations()))
    assert all(d.error is None for d in dones.values())
    # Rows 5 and 7 into rows 0 and 1 when the short ones end; then, when long5 ends, long7 from row 1 to row 0.
    assert engine.stats["rows_moved"] == 3
    if static:
        assert {rows for _, rows, _ in recorder.made} == {8, 2, 1}  # all, both long ones, the last one
    alone, _, _ = render(tail_conversations(), batch_size=1)
    assert sorted(turns) == sorted(alone)
    for key in alone:
        np.testing.assert_array_equal(turns[key].codes, alone[key].codes, err_msg=str(key))


def test_row_buckets_are_powers_of_two_up_to_the_slots():
    assert [row_bucket(hi, 12) for hi in (1, 2, 3, 4, 5, 8, 9, 12)] == [1, 2, 4, 4, 8, 8, 12, 12]
