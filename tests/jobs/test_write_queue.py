"""WriteQueue: writes run off the caller's thread, in order per key, with a bound on writes in flight."""

import threading
import time

from jobs.storage.write_queue import WriteQueue


def test_writes_of_one_key_run_in_order_and_drain_waits_for_them():
    q = WriteQueue(threads=4, max_pending=16)
    order = []

    def write(i, delay):
        def run():
            time.sleep(delay)
            order.append(i)
            return i
        return run

    # Earlier writes sleep longer: without per-key ordering, later ones would finish first.
    for i, delay in enumerate([0.05, 0.03, 0.01, 0.0]):
        q.submit("conv", write(i, delay))
    assert sorted(q.drain("conv")) == [0, 1, 2, 3]
    assert order == [0, 1, 2, 3]
    q.close()


def test_other_keys_run_concurrently():
    q = WriteQueue(threads=2, max_pending=16)
    both_running = threading.Barrier(2, timeout=5)
    for key in ("a", "b"):
        q.submit(key, lambda: both_running.wait() is not None)  # deadlocks unless a and b run at once
    assert q.drain() == [True, True]
    q.close()


def test_submit_blocks_while_max_pending_writes_are_in_flight():
    q = WriteQueue(threads=4, max_pending=2)
    release = threading.Event()
    q.submit("a", release.wait)
    q.submit("b", release.wait)
    third_submitted = threading.Event()

    def submit_third():
        q.submit("c", lambda: "c")
        third_submitted.set()

    t = threading.Thread(target=submit_third)
    t.start()
    assert not third_submitted.wait(0.2), "a third write was accepted while two were in flight"
    release.set()
    assert third_submitted.wait(5)
    t.join(5)
    assert sorted(map(str, q.drain())) == ["True", "True", "c"]
    q.close()


def test_results_collects_finished_writes_without_blocking():
    q = WriteQueue(threads=1, max_pending=4)
    gate = threading.Event()
    q.submit("a", lambda: "done-a")
    q.drain("a")  # "done-a" is returned here, so results() starts empty
    q.submit("b", lambda: gate.wait() and "done-b")
    assert q.results() == []
    gate.set()
    assert q.drain() == ["done-b"]
    q.close()
