"""The work queue with leases (jobs/cluster/feeder.py), without Ray: what each worker gets, what a dead worker's
conversations become, and the attempt limit that fails a conversation which keeps killing its workers while the
conversations that merely shared a worker with it complete."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from jobs.cluster.feeder import Feeder


@dataclass
class Item:  # stands for a jobs.plan.order.WorkItem: the feeder only reads conversation_id
    conversation_id: str


def items(*ids):
    return [Item(i) for i in ids]


def taken(got):
    assert got not in (None, False), got
    item, attempt = got
    return item.conversation_id, attempt


def test_workers_take_in_plan_order_and_hold_leases_until_finished():
    f = Feeder()
    f.put(items("a", "b", "c"))
    assert taken(f.take("w1")) == ("a", 1)
    assert taken(f.take("w2")) == ("b", 1)
    assert taken(f.take("w1")) == ("c", 1)
    assert f.held() == {"w1": 2, "w2": 1} and f.depth() == 0
    f.finish("w1", "a")
    assert f.held() == {"w1": 1, "w2": 1}


def test_empty_queue_means_ask_again_until_closed_then_no_more():
    f = Feeder()
    assert f.take("w1") is False  # the driver has not put anything yet
    f.put(items("a"))
    assert taken(f.take("w1")) == ("a", 1)
    assert f.take("w1") is False
    f.close()
    assert f.take("w1") is None and f.take("w2") is None


def test_a_dead_workers_conversations_go_first_with_one_more_attempt():
    f = Feeder(max_attempts=3)
    f.put(items("a", "b", "c", "d"))
    taken(f.take("w1")), taken(f.take("w1")), taken(f.take("w2"))  # w1: a, b; w2: c
    f.finish("w1", "a")  # a is done: it must not come back
    assert f.worker_lost("w1") == []
    assert f.held() == {"w2": 1}
    assert [taken(f.take("w3")) for _ in range(2)] == [("b", 2), ("d", 1)]
    assert f.take("w1") is False  # a lost worker id holds nothing


def test_conversation_is_failed_when_its_workers_died_max_attempts_times():
    f = Feeder(max_attempts=2)
    f.put(items("p"))
    f.close()
    assert taken(f.take("w1")) == ("p", 1)
    assert f.worker_lost("w1") == []
    assert taken(f.take("w2")) == ("p", 2)
    exhausted = f.worker_lost("w2")
    assert [(i.conversation_id, n) for i, n in exhausted] == [("p", 2)]
    assert f.take("w3") is None and f.depth() == 0


def test_one_attempt_only_fails_at_the_first_death():
    f = Feeder(max_attempts=1)
    f.put(items("p", "q"))
    taken(f.take("w1"))
    assert [(i.conversation_id, n) for i, n in f.worker_lost("w1")] == [("p", 1)]
    assert taken(f.take("w2")) == ("q", 1)


def test_last_attempt_runs_alone_so_a_poisonous_conversation_fails_alone():
    """Workers die whenever they hold "poison". "ok" shared its worker with it twice; on the last attempt each runs
    on a worker holding nothing else, so only "poison" runs out of attempts."""
    f = Feeder(max_attempts=3)
    f.put(items("poison", "ok", "later"))
    f.close()
    for attempt, worker in ((1, "w1"), (2, "w2")):
        assert [taken(f.take(worker)) for _ in range(2)] == [("poison", attempt), ("ok", attempt)]
        assert f.worker_lost(worker) == []
    assert f.depth() == 3  # poison and ok wait for a worker of their own, "later" in the shared queue

    assert taken(f.take("w3")) == ("poison", 3)
    assert f.take("w3") is False  # alone: takes nothing more while it renders its last chance
    assert taken(f.take("w4")) == ("ok", 3)
    assert f.take("w4") is False
    assert taken(f.take("w5")) == ("later", 1)
    assert f.take("w5") is None  # closed; nothing left that w5 could take

    exhausted = f.worker_lost("w3")
    assert [(i.conversation_id, n) for i, n in exhausted] == [("poison", 3)]
    f.finish("w4", "ok")
    assert f.take("w4") is None  # finished its last chance: free again, and the job is out of work


def test_a_busy_worker_takes_fresh_work_but_not_a_last_chance():
    f = Feeder(max_attempts=2)
    f.put(items("a", "b", "c"))
    taken(f.take("w1")), taken(f.take("w2"))  # w1: a, w2: b
    f.worker_lost("w1")  # a: its second and last attempt
    assert taken(f.take("w2")) == ("c", 1)  # w2 holds b: it gets fresh work, not a's last chance
    f.close()
    assert f.take("w2") is False  # a's last chance still waits: w2 may yet be the one to run it
    f.finish("w2", "b"), f.finish("w2", "c")
    assert taken(f.take("w2")) == ("a", 2)


def test_drain_returns_everything_unfinished_and_empties_the_queue():
    f = Feeder(max_attempts=2)
    f.put(items("a", "b", "c", "d"))
    taken(f.take("w1")), taken(f.take("w2"))
    f.finish("w2", "b")
    f.worker_lost("w1")  # a: last chance
    left = sorted((i.conversation_id, n) for i, n in f.drain())
    assert left == [("a", 2), ("c", 1), ("d", 1)]
    assert f.depth() == 0 and f.held() == {}


def test_activity_reports_holders_and_when_they_last_took_or_finished(monkeypatch):
    clock = iter([10.0, 20.0, 30.0])
    monkeypatch.setattr("jobs.cluster.feeder.time.monotonic", lambda: next(clock))
    f = Feeder()
    f.put(items("a", "b"))
    taken(f.take("w1"))  # t=10
    taken(f.take("w1"))  # t=20
    f.finish("w1", "a")  # t=30
    assert f.activity() == {"w1": (1, 30.0)}


def test_asking_and_getting_nothing_is_not_activity(monkeypatch):
    """A worker holding a conversation it never finishes, asking again and again while nothing is ready for it,
    has stalled: its asks must not keep the watchdog off."""
    clock = iter([10.0, 20.0, 30.0, 40.0])
    monkeypatch.setattr("jobs.cluster.feeder.time.monotonic", lambda: next(clock))
    f = Feeder()
    f.put(items("a"))
    taken(f.take("w1"))  # t=10
    assert f.take("w1") is False and f.take("w1") is False  # the queue is empty, not closed
    assert f.activity() == {"w1": (1, 10.0)}


@pytest.mark.parametrize("bad", [0, -1])
def test_max_attempts_is_at_least_one(bad):
    assert Feeder(max_attempts=bad).max_attempts == 1
