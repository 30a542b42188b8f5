"""The watermark's cost on this machine: a render with every turn marked against a plain one, in one process.

`python docs/bench/watermark.py [--model random:small] [--turns 32] [--batch-size 32] [--max-ms 2000]`

Renders `--turns` single-turn conversations with the engine twice, audio decoded as a job does: plain, then with
the watermark as jobs apply it (the engine's finalize: each step's finished turns marked as one batch, with
random:silentcipher, which has the real checkpoint's shapes and so its cost). Then marks the plain turns alone.
Prints times per turn and per audio second, and the ratios to the plain render (the issue's target: under 5% at
batch 32 on random:small).
"""

from __future__ import annotations

import time

from csm_worker import load_csm_1b
from csm_worker.watermark import RANDOM_WEIGHTS, load_watermarker
from single_turns import arguments, single_turns, timed_render


def main() -> None:
    args = arguments(turns=32, batch_size=32, max_ms=2000)
    gen = load_csm_1b(model=args.model, device="cpu")
    marker = load_watermarker(RANDOM_WEIGHTS, "cpu")
    convs = lambda: single_turns(args.turns, args.max_ms)
    timed_render(gen, convs()[:2], 2, finalize=marker.finalizer())  # warm-up: first-call costs out of the figures
    plain_s, turns = timed_render(gen, convs(), args.batch_size)
    marked_s, _ = timed_render(gen, convs(), args.batch_size, finalize=marker.finalizer())
    start = time.perf_counter()
    marker.mark_batch([t.audio for t in turns], turns[0].sample_rate)
    alone_s = time.perf_counter() - start
    audio_s = sum(len(t.audio) for t in turns) / turns[0].sample_rate
    n = len(turns)
    print(f"{n} turns, {audio_s:.1f} s of audio, batch {args.batch_size}:\n"
          f"  plain render {plain_s / n * 1000:.1f} ms per turn ({plain_s / audio_s * 1000:.1f} ms per audio s)\n"
          f"  render with every turn marked {marked_s / n * 1000:.1f} ms per turn (ratio {marked_s / plain_s:.3f})\n"
          f"  marking alone {alone_s / audio_s * 1000:.1f} ms per audio s (ratio to the plain render "
          f"{alone_s / plain_s:.3f})")


if __name__ == "__main__":
    main()
