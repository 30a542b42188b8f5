"""What the engine-level benchmarks here share: their command line, a job of single-turn conversations, and a
timed render (imported by qc_checks.py, qc_asr.py and watermark.py, run as `python docs/bench/<name>.py`)."""

from __future__ import annotations

import argparse
import time

from csm_worker import ConversationRequest, RenderedTurn, TurnRequest


def arguments(turns: int, batch_size: int, max_ms: int) -> argparse.Namespace:
    """--model, --turns, --batch-size, --max-ms, with a benchmark's own defaults."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="random:small")
    ap.add_argument("--turns", type=int, default=turns)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--max-ms", type=int, default=max_ms)
    return ap.parse_args()


def single_turns(count: int, max_ms: int) -> list[ConversationRequest]:
    """`count` conversations of one turn each, a seeded sentence of the same shape (so lengths are alike)."""
    return [ConversationRequest(f"c{i}", [TurnRequest(0, i % 2, f"This is line number {i} of the test.", seed=i,
                                                      max_audio_length_ms=max_ms)])
            for i in range(count)]


def timed_render(gen, convs, batch_size: int, **extra) -> tuple[float, list[RenderedTurn]]:
    """Seconds to render `convs` (audio decoded, as a job does) and the turns; `extra`: judge, retries, finalize."""
    start = time.perf_counter()
    turns = [e for e in gen.render(convs, batch_size=batch_size, **extra) if isinstance(e, RenderedTurn)]
    return time.perf_counter() - start, turns
