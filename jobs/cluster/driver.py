"""Following a running job on the driver: feed the queue, count what workers commit, replace workers that die.

The driver holds no audio and no whole plan: it puts planned conversations into the queue actor a chunk at a
time, as workers drain it, and reads small events from each worker's stream. When a worker dies (its process
killed, its node gone, or the watchdog stopped it), the queue hands the conversations it held to the next
worker, which continues each from its last committed turn; a replacement worker is started in its place.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ray

from csm_worker.errors import BadCheckpoint

from jobs.export.live import live_exporter
from jobs.storage.jobrecord import check_weights
from jobs.storage.outputs import OutputWriter
from jobs.progress import Progress
from jobs.cluster.feeder import FeederLost
from jobs.cluster.ray_pool import start_worker

REFILL_EVERY_S = 0.5  # how often the queue depth is checked (each check is a round trip to the queue actor)


@dataclass
class _Worker:
    id: str
    actor: object
    ready: bool = False
    slots: int = 0
    last_event: float = 0.0
    killed: bool = False


class Driver:
    def __init__(self, cfg, resources: dict, feeder, writer: OutputWriter, progress: Progress, summary,
                 chunks: Iterator[list], check: Callable[[], None]):
        self.cfg, self.resources, self.feeder, self.writer = cfg, resources, feeder, writer
        self.check = check  # raises to stop the job (OUT's lease was lost); the workers go with Ray's shutdown
        self.progress, self.summary = progress, summary
        self.chunks, self.planned_all = chunks, False
        self.workers: dict[object, _Worker] = {}  # event stream -> its worker
        self.done: set[str] = set()  # conversations finished in this run (a retried one may report twice)
        self.slots = 0  # engine slots of the workers that are ready
        self.failed_starts = 0  # workers that died before loading the model, since one last did
        self.last_error = ""
        self.next_refill = 0.0
        self.first_ready: float | None = None  # when the first worker had its model loaded
        self.exports = live_exporter(cfg, writer.storage)  # run --export: each complete conversation, at once

    def run(self, count: int) -> None:
        try:
            self._follow(count)
        except FeederLost:
            self._stop_workers()  # on a cluster they would otherwise render on until this driver exits
            raise

    def _follow(self, count: int) -> None:
        for _ in range(count):
            self._start()
        while self.workers:
            self.check()
            self._refill()
            ready, _ = ray.wait(list(self.workers), num_returns=1, timeout=1.0)
            for stream in ready:
                self._next(stream)
            self._watchdog()
            self.progress.workers(self._state())
            self.progress.refresh()
        self._fail_leftovers()
        if self.exports:
            self.exports.close()  # waits for the exports in flight
        if self.first_ready is not None:
            self.summary.render_seconds = time.monotonic() - self.first_ready

    def _ask(self, ref):
        """ray.get of a call to the queue actor; its death is FeederLost, not a worker's."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise FeederLost(f"the job's work queue (its actor on the driver's node) was lost ({_last_line(e)}); "
                             "every committed turn is kept and no conversation was marked failed: run the same "
                             "command again to resume") from None

    def _stop_workers(self) -> None:
        for worker in self.workers.values():
            ray.kill(worker.actor, no_restart=True)
        self.workers.clear()

    # -- workers ----------------------------------------------------------------------------------------------
    def _start(self) -> None:
        worker_id, actor, stream = start_worker(self.cfg, self.resources, self.feeder)
        self.workers[stream] = _Worker(worker_id, actor, last_event=time.monotonic())

    def _next(self, stream) -> None:
        worker = self.workers[stream]
        try:
            event = ray.get(next(stream))
        except StopIteration:  # the queue had nothing more for it
            del self.workers[stream]
            return
        except Exception as e:  # the worker died, or raised outside a conversation
            self._lost(stream, e)
            return
        worker.last_event = time.monotonic()
        kind = event["event"]
        if kind == "ready":
            self._ready(worker, event)
        elif kind == "turn":
            self.summary.turns_by_worker[worker.id] = self.summary.turns_by_worker.get(worker.id, 0) + 1
            self.summary.turns_rendered += 1
            self.summary.audio_seconds += event["duration_s"]
            self.progress.turn(event["duration_s"])
        elif kind == "done" and event["conversation_id"] not in self.done:
            cid = event["conversation_id"]
            self.done.add(cid)
            self.summary.failed.pop(cid, None)
            if event["error"]:
                self.summary.failed[cid] = f"{event['error_type']}: {event['error']}"
            elif self.exports:
                self.exports.submit(cid)
            self.progress.conversation(failed=bool(event["error"]))

    def _ready(self, worker: _Worker, info: dict) -> None:
        worker.ready, worker.slots = True, info["batch_size"]
        if self.first_ready is None:
            self.first_ready = time.monotonic()
        self.failed_starts = 0
        self.slots += worker.slots
        self.summary.node_of_worker[worker.id] = info["node"]
        why = f" ({info['batch_size_why']})" if info.get("batch_size_why") else ""
        print(f"worker {worker.id}: {info['device']} {info['dtype']}, {info.get('backend')} backend, batch size "
              f"{info['batch_size']}{why}, node {info['node'][:12]}"
              + (f", watermark {info['watermark']['weights']}" if info.get("watermark") else ""), file=sys.stderr)
        check_weights(self.writer.storage, info["weights_hash"])

    def _lost(self, stream, error: Exception) -> None:
        """A dead worker: its conversations go back to the queue, or fail when out of attempts; another worker
        takes its place while there is work for it."""
        worker = self.workers.pop(stream)
        self.last_error = _last_line(error)
        if not worker.ready:
            _raise_bad_checkpoint(self.last_error)
        # Asked first: when the worker died because the queue did, only the queue's loss is reported.
        returned = self._ask(self.feeder.worker_lost.remote(worker.id))
        self.slots -= worker.slots  # the replacement adds its own when ready
        self.failed_starts += not worker.ready
        self.summary.workers_lost += 1
        print(f"worker {worker.id} lost: {self.last_error}", file=sys.stderr)
        for item, attempts in returned:
            self._fail(item.conversation_id, "WorkerLost",
                       f"its worker died {attempts} time(s) while rendering it; last: {self.last_error}", attempts)
        more_work = not self.planned_all or self._ask(self.feeder.depth.remote()) > 0
        if more_work and self.failed_starts < max(1, self.cfg.max_attempts):
            self._start()

    def _watchdog(self) -> None:
        """Stop a worker that holds conversations but has committed nothing for --watchdog-s; its death then
        takes the usual path (its conversations are retried elsewhere)."""
        now = time.monotonic()
        stale = [w for w in self.workers.values()
                 if w.ready and not w.killed and now - w.last_event > self.cfg.watchdog_s]
        if not stale:
            return
        activity = self._ask(self.feeder.activity.remote())
        for w in stale:
            held, last_taken = activity.get(w.id, (0, 0.0))
            if held and now - max(w.last_event, last_taken) > self.cfg.watchdog_s:
                print(f"worker {w.id} made no progress for {self.cfg.watchdog_s:g} s: stopping it", file=sys.stderr)
                w.killed = True
                ray.kill(w.actor, no_restart=True)

    # -- the queue --------------------------------------------------------------------------------------------
    def _refill(self) -> None:
        """Keep about two conversations per engine slot waiting, so no engine idles and the plan stays on disk."""
        now = time.monotonic()
        if self.planned_all or now < self.next_refill:
            return
        self.next_refill = now + REFILL_EVERY_S
        depth = self._ask(self.feeder.depth.remote())
        while depth < max(16, 2 * self.slots):
            chunk = next(self.chunks, None)
            if chunk is None:
                self.planned_all = True
                self.feeder.close.remote()
                return
            self.feeder.put.remote(chunk)
            depth += len(chunk)

    def _fail_leftovers(self) -> None:
        """No worker is left (none could start): record every conversation not done as failed, so the job
        ends with a clear account instead of hanging."""
        left = self._ask(self.feeder.drain.remote())
        left += [(item, 0) for chunk in self.chunks for item in chunk]
        for item, attempts in left:
            self._fail(item.conversation_id, "WorkerError", f"no worker could render it: {self.last_error}",
                       attempts)

    def _fail(self, cid: str, error_type: str, message: str, attempts: int) -> None:
        if cid in self.done:
            return
        self.done.add(cid)
        self.summary.failed[cid] = message
        committed = self.writer.committed(cid)
        self.writer.write_failure(cid, error_type, message, attempts=attempts, turns_committed=len(committed))
        if committed:  # the turns its dead workers committed still get their rows, after the failure record
            self.writer.write_metadata_from_commits(cid, committed)
        self.progress.conversation(failed=True)

    def _state(self) -> str:
        ready = sum(w.ready for w in self.workers.values())
        starting = len(self.workers) - ready
        return f"workers {ready} rendering" + (f", {starting} starting" if starting else "")


def _raise_bad_checkpoint(last_line: str) -> None:
    """A worker that found the model's files unusable (incomplete, original layout, tensors that do not match):
    every other worker would find the same, so the job stops before any work, as ModelLoadError (exit 2)."""
    marker = f"{BadCheckpoint.__name__}: "
    if marker in last_line:
        raise BadCheckpoint(last_line.split(marker, 1)[1])


def _last_line(e: Exception) -> str:
    # A Ray error carries the worker's whole traceback; its last line names the actual error.
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
