"""CUDA graphs of the static decode step (static_step.py): each bucket's function captured once, then replayed.

Why: a frame is ~2,700 small kernels (one backbone step, 31 depth-decoder steps, 32 draws). Launched one by one
from Python, a GPU waits on the launches; a graph replays all of them with one call. The step's functions read
every changing input from buffers at fixed addresses (positions, frame counters, sampling settings, the active
mask) and write their results into buffers, so a replay needs nothing from Python.

Capture: a few warm-up runs on a side stream (kernels pick their algorithms and workspaces outside capture),
then the capture itself. The warm-up runs are real steps: the state they change (h, positions, frame counters,
codes) is saved before and put back after (`preserved`), so capturing a new bucket mid-run changes no result. All graphs
share one memory pool: they replay one at a time, and each one's temporaries are dead when it ends.

Where capture is impossible (no CUDA, or an op that cannot be captured) the function runs eagerly: the same
code, the same codes, slower. That is logged once per runner, with the reason.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable

import torch

log = logging.getLogger(__name__)

WARMUP_RUNS = 3  # as PyTorch's own examples: enough for cuBLAS and the caching allocator to settle


class GraphRunner:
    """What StaticStep calls to run a bucket's function: `runner(key, make, state)` -> a zero-argument callable
    (a graph's replay, or the function itself when capture is impossible)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.enabled = self.device.type == "cuda" and torch.cuda.is_available()
        self.capture_s = 0.0  # total seconds spent capturing (warm-up included)
        self.graphs: dict[tuple, "torch.cuda.CUDAGraph"] = {}
        self._pool = None
        if not self.enabled:
            log.info("CUDA graphs off: the static step runs eagerly on %s (no CUDA device)", self.device)

    def __call__(self, key: tuple, make: Callable[[], Callable[[], None]],
                 state: list[torch.Tensor]) -> Callable[[], None]:
        fn = make()
        if not self.enabled:
            return fn
        start = time.perf_counter()
        try:
            graph = self._capture(fn, state)
        except Exception as e:  # an op that cannot be captured, or out of memory: run this and later ones eagerly
            self.enabled = False
            log.warning("CUDA graph capture of %s failed (%s: %s); the static step runs eagerly from now on",
                        key, type(e).__name__, e)
            return fn
        finally:
            self.capture_s += time.perf_counter() - start
        self.graphs[key] = graph
        log.info("captured a CUDA graph for %s in %.2f s", key, time.perf_counter() - start)
        return graph.replay

    def _capture(self, fn: Callable[[], None], state: list[torch.Tensor]) -> "torch.cuda.CUDAGraph":
        with preserved(state):
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._pool):
                fn()  # recorded, not run
        return graph


@contextmanager
def preserved(state: list[torch.Tensor]):
    """Put `state` back as it was on leaving, also when a warm-up run or the capture fails (the step then runs
    eagerly from the state the engine left, not from one advanced by trial runs)."""
    saved = [t.clone() for t in state]
    try:
        yield
    finally:
        for t, s in zip(state, saved):
            t.copy_(s)
