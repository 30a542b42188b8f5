"""The quality gate's cost: the always-on checks per turn, and a judged render against a plain one, in one process.

`python docs/bench/qc_checks.py [--model random:small] [--turns 16] [--batch-size 4] [--max-ms 4000]`

Renders `--turns` single-turn conversations with the engine three ways, in this order, audio decoded as a job
does: plain (no judge); judged by the always-on checks with no retries (what every job pays); judged by a judge
that fails every attempt, with 2 retries (the worst case: each turn rendered three times). Then runs
csm_worker.quality.checks.check_turn on every rendered turn 20 times. Prints the times per turn and the ratios
to the plain render (targets: the checks under 2% of render time; the judged render within noise of plain).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from csm_worker import RenderedTurn, load_csm_1b
from csm_worker.quality.checks import check_turn
from csm_worker.quality.judge import checks_judge
from single_turns import arguments, single_turns, timed_render


@dataclass(frozen=True)
class Fail:
    passed: bool = False
    badness: float = 1.0


def render(gen, convs, batch_size, **judged) -> tuple[float, list[RenderedTurn]]:
    """Seconds per turn, and the turns."""
    seconds, turns = timed_render(gen, convs, batch_size, **judged)
    return seconds / len(turns), turns


def main() -> None:
    args = arguments(turns=16, batch_size=4, max_ms=4000)
    gen = load_csm_1b(model=args.model, device="cpu")
    convs = lambda: single_turns(args.turns, args.max_ms)
    render(gen, convs()[: args.batch_size], args.batch_size)  # warm-up: first-call costs out of the figures
    plain_s, turns = render(gen, convs(), args.batch_size)
    judged_s, _ = render(gen, convs(), args.batch_size, judge=checks_judge(), retries=0)
    worst_s, _ = render(gen, convs(), args.batch_size, judge=lambda ts: [Fail() for _ in ts], retries=2)
    start = time.perf_counter()
    for _ in range(20):
        for t in turns:
            check_turn(t.audio, t.sample_rate, t.text, t.end_reason)
    check_s = (time.perf_counter() - start) / (20 * len(turns))
    audio_s = sum(len(t.audio) for t in turns) / turns[0].sample_rate / len(turns)
    print(f"{len(turns)} turns of {audio_s:.2f} s audio on average, batch {args.batch_size}, per turn:\n"
          f"  plain render {plain_s * 1000:.1f} ms\n"
          f"  checks alone {check_s * 1000:.3f} ms (ratio {check_s / plain_s:.5f})\n"
          f"  judged render, no retries {judged_s * 1000:.1f} ms (ratio {judged_s / plain_s:.3f})\n"
          f"  every attempt failing, 2 retries {worst_s * 1000:.1f} ms (ratio {worst_s / plain_s:.3f})")


if __name__ == "__main__":
    main()
