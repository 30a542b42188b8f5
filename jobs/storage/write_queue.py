"""Turn writes off the render loop: a small thread pool, in order per conversation, with a bound.

Encoding audio and storing three objects per turn (S3 round trips of tens of milliseconds) would otherwise stall
every slot of the engine. The bound makes slow storage apply back-pressure (the render loop waits for a free
place) instead of filling memory with finished turns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait


class WriteQueue:
    def __init__(self, threads: int = 4, max_pending: int = 64):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="csm-write")
        self._places = threading.BoundedSemaphore(max_pending)
        self._last: dict[str, Future] = {}  # conversation -> its latest write
        self._results: queue.SimpleQueue = queue.SimpleQueue()

    def submit(self, key: str, write: Callable[[], object]) -> None:
        """Run `write()` after every earlier write of `key`; its result is collected by `results()`. Blocks while
        `max_pending` writes are in flight."""
        self._places.acquire()
        previous = self._last.get(key)
        self._last[key] = self._pool.submit(self._run, previous, write)

    def _run(self, previous: Future | None, write: Callable[[], object]) -> None:
        try:
            if previous is not None:
                wait([previous])  # keep a conversation's turns in order (the pool is FIFO: no deadlock)
            self._results.put(write())
        finally:
            self._places.release()

    def results(self) -> list:
        """Results of the writes finished so far (non-blocking)."""
        out = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def drain(self, key: str | None = None) -> list:
        """Wait for every write of `key` (or of all keys), then return the finished results."""
        futures = [self._last.pop(key)] if key in self._last else []
        if key is None:
            futures, self._last = list(self._last.values()), {}
        wait(futures)
        for f in futures:
            f.result()  # a write that raised outside its own error handling is a bug: surface it
        return self.results()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
