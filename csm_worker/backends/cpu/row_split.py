"""CPU decode steps split into contiguous blocks of rows, each block on its own worker thread with one intra-op
thread.

Why not torch's intra-op threads: a decode step is ~2,700 small ops, and with intra-op threads each one is a
parallel region whose threads meet at a barrier. When another process holds one of the cores (a shared machine),
every barrier waits for a scheduler slice, and a batch-64 step ran 5-10x slower on two threads than on one. Row
blocks meet once per step: on an idle machine they use both cores about as well as intra-op threads do. Rows
never interact within a step, so the split changes no result beyond what the row count of a product already may
(see backends/linear.py; blocks always have >= 2 rows).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

MIN_ROWS = 8  # fewer rows per block and the products get too thin to be worth a thread
PROBE_EVERY = 16  # steps between tries of the split not in use, so a change in the machine's load is noticed
FAR_BEHIND = 1.25  # cost ratio past which the choice not in use is tried 4x less often

_pools: dict[int, ThreadPoolExecutor] = {}
_shared: dict[tuple, "RowSplit"] = {}
_pools_lock = threading.Lock()


def _forget_pools_in_child() -> None:
    # A forked child has none of the parent's threads: it must start its own pools, not wait on dead ones.
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_in_child)


def _pool(workers: int) -> ThreadPoolExecutor:
    """One pool per worker count for the whole process (engines come and go; their threads need not)."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = _start_pool(workers)
        return _pools[workers]


def _start_pool(workers: int) -> ThreadPoolExecutor:
    # torch's thread count is per thread, read from a process-wide default on a thread's first parallel op;
    # set_num_threads writes both. So each worker does its first read, then sets 1, and the caller then
    # restores the default, for its own and new threads.
    caller_threads = torch.get_num_threads()
    started = threading.Barrier(workers)  # holds each call on its own thread, so every thread gets set up

    def set_up() -> None:
        torch.get_num_threads()
        torch.set_num_threads(1)
        started.wait()

    pool = ThreadPoolExecutor(workers, thread_name_prefix="csm-rows")
    list(pool.map(lambda _: set_up(), range(workers)))
    torch.set_num_threads(caller_threads)
    return pool


def blocks(rows: int, workers: int) -> list[tuple[int, int]]:
    """[0, rows) as at most `workers` contiguous (lo, hi) blocks of about equal size, each >= MIN_ROWS rows
    (a single block when rows are few)."""
    n = max(1, min(workers, rows // MIN_ROWS))
    edges = [rows * i // n for i in range(n + 1)]
    return list(zip(edges, edges[1:]))


class RowSplit:
    """Runs fn(lo, hi) over blocks of [0, rows), on worker threads (inline when `workers` < 1).

    With several workers it keeps recent per-row costs for one block and for `workers` blocks, uses the cheaper
    and tries the other every PROBE_EVERY steps (every 4 x PROBE_EVERY while it is far behind: each try costs a
    slow step). On a shared machine the better one changes with the load: two workers ran 1.6-1.8x one in idle
    moments and 0.7x while another process held a core (the threads then also queue for the GIL). The choice
    cannot change a result (rows are independent, blocks have >= 2 rows)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.costs: dict[int, deque] = {n: deque(maxlen=3) for n in {1, workers}} if workers > 1 else {}
        self.warm: set[int] = set()  # choices that ran once: a first run also pays one-off set-up, not recorded
        self.steps = 0

    @classmethod
    def shared(cls, workers: int, key) -> "RowSplit":
        """One RowSplit per (workers, key) for the whole process, so that engines made one after another for the
        same work (the bench makes one per measurement) start from what the last one learnt instead of paying
        for the first tries again."""
        with _pools_lock:
            return _shared.setdefault((workers, key), cls(workers))

    def run(self, fn: Callable[[int, int], torch.Tensor], rows: int) -> list[torch.Tensor]:
        if self.workers < 1:
            return [fn(0, rows)]
        # Too few rows to split: one block, and the step says nothing about which choice is better.
        n = self._choose() if len(blocks(rows, self.workers)) > 1 else 1
        parts = blocks(rows, n)
        start = time.perf_counter()
        # Even a single block runs on a worker: one intra-op thread is also the faster choice for a few rows.
        out = [f.result() for f in [_pool(self.workers).submit(fn, lo, hi) for lo, hi in parts]]
        if self.costs and len(blocks(rows, self.workers)) > 1:
            if n in self.warm:
                self.costs[n].append((time.perf_counter() - start) / rows)
            self.warm.add(n)
        return out

    def _choose(self) -> int:
        self.steps += 1
        if not self.costs:
            return self.workers
        unsure = [n for n, c in self.costs.items() if not c]
        if unsure:
            return unsure[0]
        best, other = sorted(self.costs, key=lambda n: statistics.median(self.costs[n]))
        far_behind = statistics.median(self.costs[other]) > FAR_BEHIND * statistics.median(self.costs[best])
        every = PROBE_EVERY * (4 if far_behind else 1)
        return other if self.steps % every == 0 else best
