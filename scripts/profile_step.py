"""Where a CPU decode step's time goes, per backend: `python scripts/profile_step.py [MODEL] [ROWS]`.

random:small (default) in float32 on one thread with ROWS slots (default 32, one worker's share of batch 64), no
row split, so every op runs on the profiled thread. Prints per backend the step time, the share of the depth
decoder with its draws against the backbone step (wall clock over 20 steps), and torch.profiler's top ops over 5.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from csm_worker import Generator, load_csm_1b
from csm_worker.bench import PROMPT
from csm_worker.engine.engine import Engine
from csm_worker.engine.requests import ConversationRequest, TurnRequest


def timed(times: dict, key: str, fn):
    def run(*args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[key] += time.perf_counter() - start
        return out
    return run


def profile_backend(gen: Generator, rows: int) -> None:
    m = gen.model
    engine = Engine(m, gen.codec, gen.loaded.tokenizer, batch_size=rows, decode_audio=False, workers=0)
    convs = [ConversationRequest(f"p{i}", [TurnRequest(0, i % 2, PROMPT, max_audio_length_ms=400 * 80, seed=i)])
             for i in range(rows)]
    for row, conv in enumerate(convs):
        list(engine._admit(row, conv))
    for _ in range(5):  # warm-up
        list(engine._step())
    times = {"depth": 0.0, "backbone": 0.0}
    m.sample_frame, m.decode = timed(times, "depth", m.sample_frame), timed(times, "backbone", m.decode)
    start = time.perf_counter()
    for _ in range(20):
        list(engine._step())
    total = time.perf_counter() - start
    del m.sample_frame, m.decode  # back to the class's methods
    print(f"{m.backend.name}: {1000 * total / 20:.1f} ms a step; depth decoder + draws "
          f"{100 * times['depth'] / total:.0f}%, backbone step {100 * times['backbone'] / total:.0f}%")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            list(engine._step())
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=40))


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "random:small"
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    torch.set_num_threads(1)
    gen = load_csm_1b("cpu", model)
    for g in (gen, Generator(gen.loaded, "cpu", torch.float32, backend="portable")):
        profile_backend(g, rows)


if __name__ == "__main__":
    main()
