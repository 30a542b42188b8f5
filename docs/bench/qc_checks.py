"""The always-on quality checks' cost per turn, as a fraction of the time rendering that turn took.

`python docs/bench/qc_checks.py [--model random:small] [--turns 16] [--batch-size 4] [--max-ms 4000]`

Renders `--turns` single-turn conversations with the engine (audio decoded, as a job does), then runs
csm_worker.quality.checks.check_turn on every rendered turn 20 times, in the same process. Prints the render
time per turn, the checks' time per turn and their ratio (the target is under 2% of render time).
"""

from __future__ import annotations

import argparse
import time

from csm_worker import ConversationRequest, RenderedTurn, TurnRequest, load_csm_1b
from csm_worker.quality.checks import check_turn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:small")
    ap.add_argument("--turns", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-ms", type=int, default=4000)
    args = ap.parse_args()
    gen = load_csm_1b(model=args.model, device="cpu")
    convs = [ConversationRequest(f"c{i}", [TurnRequest(0, i % 2, f"This is line number {i} of the test.",
                                                       seed=i, max_audio_length_ms=args.max_ms)])
             for i in range(args.turns)]
    start = time.perf_counter()
    turns = [e for e in gen.render(convs, batch_size=args.batch_size) if isinstance(e, RenderedTurn)]
    render_s = (time.perf_counter() - start) / len(turns)
    start = time.perf_counter()
    for _ in range(20):
        for t in turns:
            check_turn(t.audio, t.sample_rate, t.text, t.end_reason)
    check_s = (time.perf_counter() - start) / (20 * len(turns))
    audio_s = sum(len(t.audio) for t in turns) / turns[0].sample_rate / len(turns)
    print(f"{len(turns)} turns of {audio_s:.2f} s audio on average; render {render_s * 1000:.1f} ms/turn "
          f"(batch {args.batch_size}); checks {check_s * 1000:.3f} ms/turn; ratio {check_s / render_s:.5f}")


if __name__ == "__main__":
    main()
