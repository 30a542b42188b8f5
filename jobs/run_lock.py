"""One run per OUT at a time: a lease under OUT/locks/ that the running driver renews.

Two runs on one OUT (a nightly run that started while last night's still goes, a retried RayJob next to its
first attempt) would render the same conversations twice, and the second one's start would delete the first
one's unfinished writes. Commit records are create-only, so no turn could be committed twice, but the work and
the writes in flight would be lost. So a run takes OUT's lease first.

The lease needs nothing but the storage's create-only write and listing, which both backends have (S3: a
conditional put). Leases are numbered: OUT/locks/000000007.json. The highest number is the holder. A run takes the
lease by creating the next number; two runs that try at once race for the same name and only one creates it. A run
that has created its record and then finds another live run's record (taken under another number just then, from
another view of the folder) withdraws its own. The holder rewrites its own record every RENEW_S seconds; a record
not renewed for `ttl_s` (on the reader's clock, so hosts' clocks must agree to well within it) belongs to a run
that is gone. A record whose run was on this host and whose process is gone is stale at once, so re-running right
after a crash or a kill does not wait.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from . import layout
from .storage import Storage, StorageError

TTL_S = 120.0  # a lease not renewed for this long is abandoned
RENEW_S = 20.0
WAIT_STEP_S = 5.0
log = logging.getLogger(__name__)


class OutInUse(Exception):
    """Another run holds OUT's lease."""


@dataclass(frozen=True)
class Lease:
    generation: int
    run_id: str
    host: str
    pid: int
    renewed_at: float  # time.time() of the holder when it last renewed

    def describe(self, now: float) -> str:
        return (f"run {self.run_id} on {self.host} (pid {self.pid}), renewed {max(now - self.renewed_at, 0):.0f} s "
                "ago")


def read_holder(storage: Storage) -> Lease | None:
    """The newest lease record under OUT/locks/, or None."""
    for _ in range(5):  # a record released between our listing and our read: list again
        keys = _lock_keys(storage)
        if not keys:
            return None
        lease = _read(storage, keys[-1])
        if lease is not None:
            return lease
    return None


def _lock_keys(storage: Storage) -> list[str]:
    return [k for k in storage.list(layout.LOCKS) if layout.parse_lock_key(k) is not None]


def _read(storage: Storage, key: str) -> Lease | None:
    try:
        return Lease(**json.loads(storage.read_bytes(key)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # not a lease record (edited by hand?): a holder that is gone
        return Lease(layout.parse_lock_key(key), "unreadable", "?", 0, 0.0)


def is_stale(lease: Lease, now: float, ttl_s: float = TTL_S) -> bool:
    if now - lease.renewed_at > ttl_s:
        return True
    return lease.host == socket.gethostname() and not _alive(lease.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """`with RunLock(storage):` holds OUT's lease for the block; waits up to `wait_s` (default: the ttl, time
    enough for a vanished holder's lease to expire) for a live holder, then raises OutInUse."""

    def __init__(self, storage: Storage, ttl_s: float = TTL_S, wait_s: float | None = None,
                 renew_s: float = RENEW_S):
        self.storage, self.ttl_s, self.renew_s = storage, ttl_s, renew_s
        self.wait_s = ttl_s + renew_s if wait_s is None else wait_s
        self.run_id = uuid.uuid4().hex[:12]
        self.lease: Lease | None = None
        self.lost_to: Lease | None = None  # a newer holder seen while renewing (this run stalled past the ttl)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self.lease is not None and self.lost_to is None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            holder = read_holder(self.storage)
            now = time.time()
            if holder is None or is_stale(holder, now, self.ttl_s):
                if self._take((holder.generation if holder else 0) + 1):
                    if holder is not None:
                        log.warning("%s: took over the lease of %s", self.storage.url, holder.describe(now))
                    return
                continue  # another run took that number first: look again
            if time.monotonic() >= deadline:
                raise OutInUse(f"{self.storage.url} is in use by {holder.describe(now)}; one run per OUT at a "
                               f"time. If that run is gone, its lease expires {self.ttl_s:.0f} s after its last "
                               "renewal; run again then.")
            if not told:
                log.warning("%s is in use by %s; waiting up to %.0f s for it to end", self.storage.url,
                            holder.describe(now), self.wait_s)
                told = True
            time.sleep(min(WAIT_STEP_S, max(deadline - time.monotonic(), 0.01)))

    def _take(self, generation: int) -> bool:
        lease = Lease(generation, self.run_id, socket.gethostname(), os.getpid(), time.time())
        try:
            self.storage.write_new(layout.lock_key(generation), _encode(lease))
        except StorageError:  # a different record is there: that run won the race
            return False
        if not self._alone(generation):
            self.storage.delete(layout.lock_key(generation))
            return False
        self.lease = lease
        self._renewer = threading.Thread(target=self._renew_loop, name="csm-render-lease", daemon=True)
        self._renewer.start()
        return True

    def _alone(self, generation: int) -> bool:
        """After creating our record: delete the records of runs that are gone; False when a live run's record is
        there too (it took another number just as we took ours, e.g. after the holder we saw released OUT)."""
        for key in _lock_keys(self.storage):
            if layout.parse_lock_key(key) == generation:
                continue
            other = _read(self.storage, key)
            if other is None:
                continue
            if not is_stale(other, time.time(), self.ttl_s):
                return False
            self.storage.delete(key)
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self.renew()
            except Exception as e:  # storage trouble: try again next time; the ttl leaves room for several
                log.warning("%s: could not renew the run's lease: %s", self.storage.url, e)
            if self.lost_to is not None:
                return

    def renew(self) -> None:
        holder = read_holder(self.storage)
        if holder is not None and holder.generation > self.lease.generation:
            self.lost_to = holder
            log.error("%s: this run's lease was taken over by %s (this run was not heard from for %.0f s)",
                      self.storage.url, holder.describe(time.time()), self.ttl_s)
            return
        self.lease = Lease(**{**asdict(self.lease), "renewed_at": time.time()})
        self.storage.write_bytes(layout.lock_key(self.lease.generation), _encode(self.lease))

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.held:
            self.storage.delete(layout.lock_key(self.lease.generation))
        self.lease = None


def _encode(lease: Lease) -> bytes:
    return json.dumps(asdict(lease), sort_keys=True).encode()
