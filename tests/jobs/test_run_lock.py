"""OUT's lease (jobs/storage/run_lock.py): one run per OUT, on a local folder and on S3 (moto's server on loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time

import pytest

from jobs.storage import layout, run_lock
from jobs.storage.run_lock import Lease, LeaseLost, OutInUse, RunLock, read_holder
from jobs.storage import LocalStorage, StorageError, open_storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "out")
    bucket = request.getfixturevalue("bucket")
    return open_storage(f"s3://{bucket}/out")


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(run_lock, "WAIT_STEP_S", 0.05)


def put_lease(storage, generation=1, host=None, pid=None, age_s=0.0, run_id="other") -> Lease:
    lease = Lease(generation, run_id, host or socket.gethostname(), pid or os.getpid(), time.time() - age_s)
    storage.write_bytes(layout.lock_key(generation), json.dumps(lease.__dict__).encode())
    return lease


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_the_lease_is_held_for_the_block_and_released_after(storage):
    with RunLock(storage) as lock:
        holder = read_holder(storage)
        assert (holder.run_id, holder.pid, holder.generation, holder.released) == (lock.run_id, os.getpid(), 1, False)
        assert lock.held
    assert read_holder(storage).released  # marked, not deleted: the number is never taken again
    with RunLock(storage, wait_s=0) as second:
        assert second.lease.generation == 2
        assert [layout.parse_lock_key(k) for k in storage.list(layout.LOCKS)] == [2]


def test_a_live_holder_keeps_out(storage):
    put_lease(storage, run_id="nightly")  # this very process: alive
    with pytest.raises(OutInUse, match=r"in use by run nightly on .* \(pid \d+\)"):
        RunLock(storage, wait_s=0).acquire()
    assert [layout.parse_lock_key(k) for k in storage.list(layout.LOCKS)] == [1]


def test_waits_for_the_holder_to_release(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    first = RunLock(storage).__enter__()
    threading.Timer(0.3, first.release).start()
    with RunLock(storage, wait_s=30) as second:
        assert read_holder(storage).run_id == second.run_id


def test_a_lease_not_renewed_within_the_ttl_is_taken_over(storage):
    put_lease(storage, host="elsewhere", pid=1, age_s=200)
    with RunLock(storage, wait_s=0) as lock:
        assert lock.lease.generation == 2
        assert [layout.parse_lock_key(k) for k in storage.list(layout.LOCKS)] == [2]  # the old record is gone


def test_a_remote_holder_that_stops_renewing_is_waited_out(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    started = time.monotonic()
    put_lease(storage, host="elsewhere", pid=1)
    with RunLock(storage, ttl_s=0.5, wait_s=30) as lock:
        assert time.monotonic() - started >= 0.5 and lock.lease.generation == 2


def test_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    put_lease(storage, pid=dead_pid())  # a run on this host that was killed
    with RunLock(storage, wait_s=0) as lock:
        assert lock.lease.generation == 2


def test_an_unreadable_lease_record_is_taken_over(storage):
    storage.write_bytes(layout.lock_key(3), b"not json")
    with RunLock(storage, wait_s=0) as lock:
        assert lock.lease.generation == 4


class RacingStorage(LocalStorage):
    """Both contenders look (and see no holder) before either creates: the race the numbered names decide."""

    def __init__(self, root, barrier):
        super().__init__(root)
        self.barrier = barrier

    def write_new(self, key, data):
        if key.startswith(layout.LOCKS):
            self.barrier.wait(timeout=10)
        return super().write_new(key, data)


class IgnoringStorage(RacingStorage):
    """A store that does not honour create-only writes: the second put silently replaces the first. Both runs
    write before either looks again, so the run whose record was replaced must see that it is not its own. (If
    one looked before the other wrote, both would hold until the next renewal: such a store is only safe to
    within a renewal.)"""

    def write_new(self, key, data):
        if key.startswith(layout.LOCKS):
            self.barrier.wait(timeout=10)  # both looked and saw OUT free: neither has written yet
        self.write_bytes(key, data)
        if key.startswith(layout.LOCKS):
            self.barrier.wait(timeout=10)  # both wrote before either looks again
        return True


@pytest.mark.parametrize("store", [RacingStorage, IgnoringStorage])
def test_of_two_runs_starting_at_once_exactly_one_holds_out(tmp_path, store):
    barrier = threading.Barrier(2)
    outcomes, locks = [], []

    def contend():
        lock = RunLock(store(tmp_path / "out", barrier), wait_s=0)
        locks.append(lock)
        try:
            lock.acquire()
            outcomes.append("held")
        except OutInUse:
            outcomes.append("refused")
            barrier.abort()  # nobody else will meet it again

    threads = [threading.Thread(target=contend) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(outcomes) == ["held", "refused"]
    assert [layout.parse_lock_key(k) for k in LocalStorage(tmp_path / "out").list(layout.LOCKS)] == [1]
    for lock in locks:
        lock.release()


def test_a_taker_that_finds_another_live_record_backs_off(storage):
    # A took over a stale generation 5 from an outdated view, while B, seeing OUT free after 5 was released,
    # took generation 1: whoever sees the other's live record after creating its own withdraws it.
    put_lease(storage, generation=1, run_id="b")  # B: this process, alive and fresh
    late = RunLock(storage, wait_s=0)
    assert late._take(6) is False
    assert [layout.parse_lock_key(k) for k in storage.list(layout.LOCKS)] == [1]
    put_lease(storage, generation=1, run_id="b", host="elsewhere", age_s=500)  # now B is gone
    assert late._take(6) is True
    assert [layout.parse_lock_key(k) for k in storage.list(layout.LOCKS)] == [6]
    late.release()


def test_renewal_refreshes_the_record_and_notices_a_takeover(storage):
    lock = RunLock(storage, renew_s=0.05).__enter__()
    first = read_holder(storage).renewed_at
    deadline = time.monotonic() + 10
    while read_holder(storage).renewed_at == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_holder(storage).renewed_at > first
    put_lease(storage, generation=2, run_id="newer")  # as a run that found this one stale would
    while lock.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.lost_to.run_id == "newer" and not lock.held
    lock.release()
    assert read_holder(storage).run_id == "newer"  # releasing a lost lease leaves the new holder's record


def test_a_run_whose_own_record_was_replaced_knows_it_lost(storage):
    # A store that does not honour create-only writes, or a record rewritten by hand: the record is not ours.
    lock = RunLock(storage, renew_s=0.05).__enter__()
    put_lease(storage, generation=1, run_id="intruder")
    deadline = time.monotonic() + 10
    while lock.held and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LeaseLost, match="taken over by run intruder"):
        lock.check()
    lock.release()
    assert read_holder(storage).run_id == "intruder"  # not marked released by the run that lost it


class DeniedStorage(LocalStorage):
    def write_new(self, key, data):
        raise StorageError(f"S3 create of {key} failed: AccessDenied")


def test_a_storage_error_while_taking_the_lease_is_raised_not_retried(tmp_path):
    with pytest.raises(StorageError, match="AccessDenied"):
        RunLock(DeniedStorage(tmp_path / "out"), wait_s=5).acquire()


def test_a_failing_release_does_not_raise(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    lock = RunLock(storage).__enter__()
    storage.write_bytes = lambda key, data: (_ for _ in ()).throw(StorageError("the store is down"))
    lock.release()  # logged; the lease expires by itself
    assert not read_holder(LocalStorage(tmp_path / "out")).released
