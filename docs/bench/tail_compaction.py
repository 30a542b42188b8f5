"""A job's tail: how much moving the last conversations into the lowest rows (engine.py `_compact`) saves.

`python docs/bench/tail_compaction.py [--model random:small] [--batch-size 64] [--rounds 2] [--static]`

One batch of B single-turn conversations whose lengths are spread evenly over 10..(8 + 2B) frames, in a seeded
shuffled order as a real manifest's would be, so the survivors of the tail sit scattered over the slots. Each
round renders the batch with moving on and off (rows stay where they started, as before this change) in one
process, alternating which goes first, and prints both wall times, their ratio, and whether the codes agree.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from csm_worker import ConversationRequest, RenderedTurn, TurnRequest, load_csm_1b
from csm_worker.engine.engine import Engine


def conversations(batch: int) -> list[ConversationRequest]:
    frames = [10 + 2 * i for i in range(batch)]
    random.Random(0).shuffle(frames)
    return [ConversationRequest(f"c{i}", [TurnRequest(0, i % 2, f"Line number {i}.", seed=i,
                                                      max_audio_length_ms=n * 80)])
            for i, n in enumerate(frames)]


def render(gen, batch: int, compact: bool, static: bool) -> tuple[float, dict, dict]:
    engine = Engine(gen.model, gen.codec, gen.loaded.tokenizer, batch_size=batch, decode_audio=False,
                    static=static)
    if not compact:
        engine._compact = lambda: None
    start = time.perf_counter()
    codes = {e.conversation_id: e.codes for e in engine.run(conversations(batch)) if isinstance(e, RenderedTurn)}
    wall = time.perf_counter() - start
    return wall, codes, {"steps": engine.stats["steps"], "frames": engine.stats["frames"],
                         "rows_moved": engine.stats["rows_moved"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:small")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--static", action="store_true", help="the fixed-shape step (what a GPU runs), eagerly")
    args = ap.parse_args()
    gen = load_csm_1b("cpu", args.model)
    render(gen, 8, True, args.static)  # warm-up: scripting, the native top-k, the row split's first choice
    for r in range(args.rounds):
        results = {}
        for compact in ((False, True) if r % 2 == 0 else (True, False)):
            results[compact] = render(gen, args.batch_size, compact, args.static)
        (off, codes_off, s_off), (on, codes_on, s_on) = results[False], results[True]
        same = codes_off.keys() == codes_on.keys() and all(np.array_equal(codes_off[k], codes_on[k])
                                                           for k in codes_off)
        print(f"round {r + 1}: without moving {off:.1f} s, with {on:.1f} s: x{off / on:.2f}; "
              f"{s_on['frames']} frames in {s_on['steps']} steps, {s_on['rows_moved']} rows moved; "
              f"same codes: {same}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
