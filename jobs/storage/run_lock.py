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
after a crash or a kill does not wait. A run that ends marks its record released rather than deleting it, so no
number is ever taken twice, and a renewal that finds a newer number, or its own record not its own, means this run
lost OUT: the driver then stops the job (RunLock.check raises LeaseLost).
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace

from jobs.storage import layout
from jobs.storage import ObjectExists, Storage

TTL_S = 120.0  # a lease not renewed for this long is abandoned
RENEW_S = 20.0
WAIT_STEP_S = 5.0
log = logging.getLogger(__name__)


class OutInUse(Exception):
    """Another run holds OUT's lease."""


class LeaseLost(OutInUse):
    """Another run took OUT's lease over while this one was running (this one was not heard from for the ttl)."""


@dataclass(frozen=True)
class Lease:
    generation: int
    run_id: str
    host: str
    pid: int
    renewed_at: float  # time.time() of the holder when it last renewed
    released: bool = False  # the run ended; the record stays so that generation numbers are never reused

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
    if lease.released or now - lease.renewed_at > ttl_s:
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
                 renew_s: float | None = None):
        self.storage, self.ttl_s = storage, ttl_s
        self.renew_s = RENEW_S if renew_s is None else renew_s
        self.wait_s = ttl_s + self.renew_s if wait_s is None else wait_s
        self.run_id = uuid.uuid4().hex[:12]
        self.lease: Lease | None = None
        self.lost_to: Lease | None = None  # who holds OUT now, seen while renewing (this run stalled past the ttl)
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

    def check(self) -> None:
        """Raise LeaseLost when another run has taken OUT over: this run must stop writing."""
        if self.lost_to is not None:
            raise LeaseLost(f"{self.storage.url} was taken over by {self.lost_to.describe(time.time())} while this "
                            f"run was not heard from for {self.ttl_s:.0f} s; this run stopped. Committed turns are "
                            "kept; the other run goes on with the rest.")

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            holder = read_holder(self.storage)
            now = time.time()
            if holder is None or is_stale(holder, now, self.ttl_s):
                if self._take((holder.generation if holder else 0) + 1):
                    if holder is not None and not holder.released:
                        log.warning("%s: took over the lease of %s", self.storage.url, holder.describe(now))
                    return
                holder = read_holder(self.storage)  # whoever took it instead
            if time.monotonic() >= deadline:
                who = holder.describe(time.time()) if holder else "another run starting at the same moment"
                raise OutInUse(f"{self.storage.url} is in use by {who}; one run per OUT at a time. If that run is "
                               f"gone, its lease expires {self.ttl_s:.0f} s after its last renewal; run again then.")
            if holder is not None and not told:
                log.warning("%s is in use by %s; waiting up to %.0f s for it to end", self.storage.url,
                            holder.describe(now), self.wait_s)
                told = True
            # Jittered, so two runs that keep meeting each other's records do not keep meeting.
            time.sleep(min(WAIT_STEP_S, max(deadline - time.monotonic(), 0.01)) * random.uniform(0.5, 1.0))

    def _take(self, generation: int) -> bool:
        lease = Lease(generation, self.run_id, socket.gethostname(), os.getpid(), time.time())
        key = layout.lock_key(generation)
        try:
            self.storage.write_new(key, _encode(lease))
        except ObjectExists:  # another run created that number first
            return False
        if not self._alone(generation):
            if self._ours(generation):
                self.storage.delete(key)
            return False
        self.lease = lease
        self._renewer = threading.Thread(target=self._renew_loop, name="csm-render-lease", daemon=True)
        self._renewer.start()
        return True

    def _alone(self, generation: int) -> bool:
        """After creating our record: delete the records of runs that are gone; False when a live run's record is
        there too (it took another number just as we took ours, e.g. after the holder we saw released OUT), or
        when our record is not ours after all (a store that does not honour create-only writes)."""
        for key in _lock_keys(self.storage):
            if layout.parse_lock_key(key) == generation:
                continue
            other = _read(self.storage, key)
            if other is None:
                continue
            if not is_stale(other, time.time(), self.ttl_s):
                return False
            self.storage.delete(key)
        return self._ours(generation)

    def _ours(self, generation: int) -> bool:
        record = _read(self.storage, layout.lock_key(generation))
        return record is not None and record.run_id == self.run_id

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
        if not self._ours(self.lease.generation) or (holder and holder.generation > self.lease.generation):
            self.lost_to = holder or Lease(0, "unknown", "?", 0, 0.0)
            log.error("%s: this run's lease was taken over by %s (this run was not heard from for %.0f s)",
                      self.storage.url, self.lost_to.describe(time.time()), self.ttl_s)
            return
        self.lease = replace(self.lease, renewed_at=time.time())
        self.storage.write_bytes(layout.lock_key(self.lease.generation), _encode(self.lease))

    def release(self) -> None:
        """End the lease: the record is marked released (not deleted, so its number is never taken again). Never
        raises: a failure here must not hide the run's own outcome; the lease then expires by itself."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=max(self.renew_s, 30.0))
        try:
            if self.held and self._ours(self.lease.generation):
                done = replace(self.lease, renewed_at=time.time(), released=True)
                self.storage.write_bytes(layout.lock_key(done.generation), _encode(done))
        except Exception as e:
            log.warning("%s: could not release the run's lease (it expires %.0f s after its last renewal): %s",
                        self.storage.url, self.ttl_s, e)
        self.lease = None


def _encode(lease: Lease) -> bytes:
    return json.dumps(asdict(lease), sort_keys=True).encode()
