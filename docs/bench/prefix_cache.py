"""A job with a cast: 64 conversations of 4 short turns, each starting with the same 2-speaker cast of ~10 s
prompts, rendered on random:small (CPU, float32) with and without the engine's prefix cache, alternately, in one
run. Prints prefill positions computed and wall time of each, and their ratios. Figures in docs/BENCHMARKS.md.

`python docs/bench/prefix_cache.py [--rounds 2] [--batch-size 16]`
"""
import argparse
import time

import numpy as np

from csm_worker import ConversationRequest, TurnRequest, load_csm_1b
from csm_worker.engine.engine import Engine

CONVERSATIONS, TURNS, PROMPT_S, TURN_FRAMES = 64, 4, 10.0, 8


def prompt_audio(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(24_000 * PROMPT_S)) / 24_000
    return (0.3 * np.sin(2 * np.pi * (180 + 60 * seed) * t) + 0.03 * rng.standard_normal(t.shape)).astype(np.float32)


def job(cast: list[TurnRequest]) -> list[ConversationRequest]:
    return [ConversationRequest(f"c{n}", cast + [
        TurnRequest(i, i % 2, f"Conversation {n}, line {i}.", temperature=0.9, top_k=50,
                    max_audio_length_ms=TURN_FRAMES * 80, seed=1000 * n + i) for i in range(TURNS)])
        for n in range(CONVERSATIONS)]


def measure(gen, cast, batch_size: int, prefix_bytes: int) -> tuple[float, dict]:
    engine = Engine(gen.model, gen.codec, gen.loaded.tokenizer, batch_size=batch_size, decode_audio=False,
                    prefix_cache_bytes=prefix_bytes)
    started = time.perf_counter()
    list(engine.run(job(cast)))
    return time.perf_counter() - started, dict(engine.stats)


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--rounds", type=int, default=2)
    args.add_argument("--batch-size", type=int, default=16)
    opts = args.parse_args()
    gen = load_csm_1b("cpu", "random:small")
    cast = [TurnRequest(-2, 0, "This is how the narrator sounds, for ten seconds or so.", audio=prompt_audio(1)),
            TurnRequest(-1, 1, "And this is the guest, speaking for about as long.", audio=prompt_audio(2))]
    gen.codec.encode(cast[0].audio), gen.codec.encode(cast[1].audio)  # Mimi's cache: not part of either figure
    best = {}
    for _ in range(opts.rounds):  # interleaved, so a busy moment of the machine does not favour one side
        for name, size in (("without", 0), ("with", 512 << 20)):
            wall, stats = measure(gen, cast, opts.batch_size, size)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, stats)
            print(f"{name:>7} prefix cache: {wall:6.2f} s, {stats['prefill_positions']} prefill positions, "
                  f"{stats['prefix_positions_copied']} copied, {stats['frames']} frames")
    (w0, s0), (w1, s1) = best["without"], best["with"]
    prompt = s1["prefix_positions_copied"] // (CONVERSATIONS - 1)  # the cast's positions in one conversation
    p0, p1 = s0["prefill_positions"], s1["prefill_positions"]
    print(f"prefill positions: {p0} -> {p1} ({p0 / p1:.1f}x fewer); the cast's prompts: {CONVERSATIONS * prompt} "
          f"-> {prompt} ({CONVERSATIONS}x fewer; {prompt} positions a conversation)")
    print(f"wall time (best of {opts.rounds}): {w0:.2f} s -> {w1:.2f} s ({w0 / w1:.2f}x faster), "
          f"{TURNS * CONVERSATIONS} turns at batch {opts.batch_size}")


if __name__ == "__main__":
    main()
