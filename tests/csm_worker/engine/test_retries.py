"""Retries (engine/retries.py): a turn its judge fails is rendered again from its own start, before the next turn
hears it, and the attempt kept is exactly what a fresh render with that attempt's seed gives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from csm_worker import ConversationRequest, TurnRequest
from csm_worker.engine.engine import Engine
from csm_worker.engine.retries import Attempts, attempt_seed

from .test_engine import assert_same_codes, codes_of


@dataclass(frozen=True)
class Verdict:
    passed: bool
    badness: float = 0.0


class ScriptedJudge:
    """Fails the attempts named in `script` ({(conversation, turn, attempt): badness}); passes every other one.
    Records every attempt it saw: (conversation, turn, attempt, codes)."""

    def __init__(self, script: dict):
        self.script, self.seen = script, []

    def __call__(self, turns):
        verdicts = []
        for t in turns:
            self.seen.append((t.conversation_id, t.turn_index, t.attempt, t.codes.copy()))
            badness = self.script.get((t.conversation_id, t.turn_index, t.attempt))
            verdicts.append(Verdict(True) if badness is None else Verdict(False, badness))
        return verdicts


def conversation(cid: str, seed: int, frames=(6, 5, 4), top_k: int = 50, seeds: dict | None = None):
    """Sampled turns; `seeds` overrides a turn's seed (a fresh render of one of its later attempts)."""
    seeds = seeds or {}
    return ConversationRequest(cid, [
        TurnRequest(i, i % 2, f"Retried turn {i}", top_k=top_k, temperature=0.9, seed=seeds.get(i, seed + i),
                    max_audio_length_ms=n * 80)
        for i, n in enumerate(frames)])


@pytest.fixture(params=[False, True], ids=["dynamic", "static"])
def run(request, bgen, collect):
    """Render with a fresh engine on each backend, with the dynamic and with the static (CUDA-graph) step."""

    def go(conversations, batch_size=1, judge=None, retries=0):
        engine = Engine(bgen.model, bgen.codec, bgen.loaded.tokenizer, batch_size=batch_size, decode_audio=False,
                        static=request.param)
        turns, dones, _ = collect(engine.run(conversations, judge=judge, retries=retries))
        assert all(d.error is None for d in dones.values()), dones
        return turns, engine

    return go


def test_attempt_seeds_are_the_turns_own_first_then_fixed_and_distinct():
    assert attempt_seed(41, 1) == 41
    assert attempt_seed(41, 2) == attempt_seed(41, 2)  # a resumed job draws the same attempts
    seeds = {attempt_seed(s, a) for s in range(40, 44) for a in (2, 3, 4)}
    assert len(seeds) == 12 and not seeds & set(range(40, 44))  # consecutive turn seeds do not collide
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_failed_turn_is_rewound_and_the_passing_attempt_is_a_fresh_render_of_it(run):
    """Turn 1 fails twice; its third attempt passes. The turn handed back, and the turn after it (which heard it),
    are exactly a fresh render whose turn 1 has the third attempt's seed: the rewind kept the context before the
    turn and left nothing of the failed attempts in the cache."""
    judge = ScriptedJudge({("c", 1, 1): 2, ("c", 1, 2): 1})
    turns, engine = run([conversation("c", 10)], judge=judge, retries=2)
    fresh, _ = run([conversation("c", 10, seeds={1: attempt_seed(11, 3)})])
    assert_same_codes(codes_of(turns), codes_of(fresh))
    assert (turns[("c", 1)].attempt, turns[("c", 1)].attempts) == (3, 3)
    assert turns[("c", 1)].quality == Verdict(True) and turns[("c", 1)].seed == 11  # the turn's own seed
    assert [(t.attempt, t.attempts) for k, t in sorted(turns.items()) if k != ("c", 1)] == [(1, 1), (1, 1)]
    assert engine.stats["retries"] == 2
    tried = [codes for cid, idx, _, codes in judge.seen if idx == 1]
    assert len(tried) == 3 and not np.array_equal(tried[0], tried[1])  # each attempt drew anew
    # The first attempt is the render without a judge.
    plain, _ = run([conversation("c", 10)])
    np.testing.assert_array_equal(tried[0], plain[("c", 1)].codes)


def test_when_no_attempt_passes_the_least_bad_is_kept_and_heard_by_the_next_turn(run):
    """Attempt 2 fails least: it is kept (flagged), although the cache last held attempt 3, and the next turn is
    rendered on attempt 2's frames, as a fresh render with attempt 2's seed gives."""
    judge = ScriptedJudge({("c", 0, 1): 3, ("c", 0, 2): 1, ("c", 0, 3): 2})
    turns, _ = run([conversation("c", 20)], judge=judge, retries=2)
    fresh, _ = run([conversation("c", 20, seeds={0: attempt_seed(20, 2)})])
    assert_same_codes(codes_of(turns), codes_of(fresh))
    kept = turns[("c", 0)]
    assert (kept.attempt, kept.attempts, kept.quality) == (2, 3, Verdict(False, 1))


def test_ties_keep_the_earliest_attempt_and_retries_stop_at_the_limit(run):
    judge = ScriptedJudge({("c", 0, a): 1 for a in range(1, 10)})
    turns, engine = run([conversation("c", 30, frames=(4,))], judge=judge, retries=1)
    plain, _ = run([conversation("c", 30, frames=(4,))])
    assert (turns[("c", 0)].attempt, turns[("c", 0)].attempts) == (1, 2)
    assert engine.stats["retries"] == 1
    assert_same_codes(codes_of(turns), codes_of(plain))


def test_the_other_rows_go_on_and_keep_their_codes(run):
    """A batch of three where one conversation retries twice mid-batch: every conversation's codes are those it
    gets alone (the neighbours are not held up or disturbed, the retried one is not disturbed by them)."""
    convs = lambda seeds=None: [conversation("a", 100, frames=(7, 3)),
                                conversation("b", 200, frames=(3, 6, 3), seeds=seeds),
                                conversation("c", 300, frames=(5, 5))]
    judge = ScriptedJudge({("b", 1, 1): 1, ("b", 1, 2): 1})
    turns, _ = run(convs(), batch_size=3, judge=judge, retries=2)
    alone, _ = run(convs(seeds={1: attempt_seed(201, 3)}), batch_size=1)
    assert_same_codes(codes_of(turns), codes_of(alone))


def test_greedy_turns_are_not_retried(run):
    """A greedy attempt would come out the same: one attempt, flagged."""
    judge = ScriptedJudge({("g", 0, a): 1 for a in range(1, 4)})
    turns, engine = run([conversation("g", 0, frames=(4,), top_k=1)], judge=judge, retries=2)
    assert (turns[("g", 0)].attempts, engine.stats["retries"]) == (1, 0)
    assert turns[("g", 0)].quality == Verdict(False, 1)


def test_without_retries_the_judge_still_rates_every_turn(run):
    judge = ScriptedJudge({("c", 0, 1): 1})
    turns, engine = run([conversation("c", 5, frames=(3, 3))], judge=judge, retries=0)
    assert turns[("c", 0)].quality == Verdict(False, 1) and turns[("c", 1)].quality == Verdict(True)
    assert engine.stats["retries"] == 0 and len(judge.seen) == 2


def test_attempts_keep_the_first_pass_or_the_least_bad():
    from csm_worker import RenderedTurn

    def turn(n):
        return RenderedTurn("c", 0, 0, "t", codes=np.zeros((32, n), dtype=np.int64), seed=0, end_reason="eos",
                            attempt=n)

    a = Attempts()
    for n, verdict in [(1, Verdict(False, 2)), (2, Verdict(False, 1)), (3, Verdict(False, 1))]:
        a.add(turn(n), verdict)
    assert (a.count, a.best.attempt) == (3, 2)
    a.add(turn(4), Verdict(True, 5))  # a pass beats any failure, whatever badness it carries
    assert a.best.attempt == 4 and a.best.quality == Verdict(True, 5)
