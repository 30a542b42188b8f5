"""The render worker without Ray: a real RenderWorker (random:tiny on CPU) pulling from a real Feeder."""

from __future__ import annotations

import threading

import pytest

from jobs.storage import layout
from jobs.cluster.feeder import Feeder
from jobs.manifests.manifest import ConversationSpec, TurnSpec
from jobs.plan.order import Defaults, WorkItem
from jobs.storage import LocalStorage
from jobs.cluster.worker import RenderWorker

HANG_S = 300  # far beyond a few 5-frame turns on CPU: only a worker that never ends gets there


class FeederFeed:
    """What jobs.cluster.ray_pool.RayFeed does for a Ray actor: one worker's view of the shared Feeder."""

    def __init__(self, feeder: Feeder, worker: str):
        self.feeder, self.worker = feeder, worker

    def take(self):
        return self.feeder.take(self.worker)

    def holds(self, conversation_id: str) -> bool:
        return self.feeder.holds(self.worker, conversation_id)

    def finish(self, conversation_id: str) -> None:
        self.feeder.finish(self.worker, conversation_id)


def conversation(cid: str, *, voice: str | None = None) -> WorkItem:
    turns = [TurnSpec(cid, 0, 0, "hello there", audio=voice), TurnSpec(cid, 1, 1, "and hello back")]
    return WorkItem(ConversationSpec(cid, turns))


def render_all(worker: RenderWorker, feed: FeederFeed) -> list[dict]:
    """The worker's events, from a thread joined with a bound, so that a worker that never ends fails the test
    instead of hanging it."""
    events: list[dict] = []
    thread = threading.Thread(target=lambda: events.extend(worker.render(feed)), daemon=True)
    thread.start()
    thread.join(HANG_S)
    assert not thread.is_alive(), f"the worker never finished; events so far: {events}"
    return events


@pytest.fixture
def worker(csm_cache, tmp_path):
    return RenderWorker("random:tiny", str(tmp_path / "out"), device="cpu", batch_size=2,
                        defaults=Defaults(max_audio_length_ms=400))


def test_a_last_attempt_that_fails_before_the_engine_does_not_stall_its_worker(worker, tmp_path):
    """A conversation on its last attempt runs alone; when it fails before reaching the engine (its voice prompt
    is unreadable), the worker must finish it at once: an engine with no rows yields nothing, so waiting for the
    next engine event would keep the worker alone, taking nothing, for ever."""
    feeder = Feeder(max_attempts=2)
    feeder.put([conversation("broken", voice=str(tmp_path / "missing.wav"))])
    assert feeder.take("dead-worker")[1] == 1
    feeder.worker_lost("dead-worker")  # "broken" comes back as a last chance, to run alone
    feeder.put([conversation("fine")])
    feeder.close()

    events = render_all(worker, FeederFeed(feeder, "w1"))

    done = {e["conversation_id"]: e for e in events if e["event"] == "done"}
    assert set(done) == {"broken", "fine"}
    assert done["broken"]["error"] and done["broken"]["turns_committed"] == 0
    assert done["fine"]["error"] is None and done["fine"]["turns_committed"] == 2
    storage = LocalStorage(tmp_path / "out")
    assert storage.exists(layout.failure_key("broken")) and not storage.exists(layout.failure_key("fine"))
    assert feeder.held() == {} and feeder.depth() == 0


def test_a_failing_retry_writes_its_failure_record_before_its_partial_metadata(worker, tmp_path):
    """A retry (attempt 2) of a conversation with turn 0 committed whose stored codes are gone fails before the
    engine. Its failure record must come before the 1-row metadata file: a kill between the two must never leave
    a partial file without a failure record (runner.repair_metadata relies on it)."""
    from tests.jobs.test_metadata_rows import RecordingStorage, commit

    storage = RecordingStorage(tmp_path / "out")
    worker.writer.storage = storage
    commit(worker.writer, "c", 0)
    storage.delete(layout.codes_key("c", 0))
    feeder = Feeder(max_attempts=3)
    feeder.put([conversation("c")])
    feeder.take("dead-worker")
    feeder.worker_lost("dead-worker")  # attempt 2 re-lists what is committed: turn 0
    feeder.close()
    storage.log.clear()

    events = render_all(worker, FeederFeed(feeder, "w1"))

    assert [e["turns_committed"] for e in events if e["event"] == "done"] == [1]
    assert storage.log == [("write", layout.failure_key("c")), ("write", layout.metadata_key("c"))]


@pytest.mark.parametrize("recorded", ["same", "other"])
def test_a_worker_with_other_weights_than_the_job_takes_no_work(worker, tmp_path, recorded):
    """The job record names the weights the job was rendered with: a worker whose weights differ (a --model
    folder changed, a node with another copy) says it is ready, so the driver can refuse the job, and renders
    nothing, before the driver has even read its "ready"."""
    import json

    mine = worker.generator.loaded.weights_hash
    record = {"weights_hash": mine if recorded == "same" else "0" * len(mine)}
    LocalStorage(tmp_path / "out").write_bytes(layout.JOB_RECORD, json.dumps(record).encode())
    feeder = Feeder()
    feeder.put([conversation("c")])
    feeder.close()

    events = render_all(worker, FeederFeed(feeder, "w1"))

    assert events[0]["event"] == "ready" and events[0]["weights_hash"] == mine
    if recorded == "same":
        assert [e["event"] for e in events[1:]].count("done") == 1
    else:
        assert events[1:] == [] and feeder.depth() == 1  # "c" was never taken


def test_a_worker_that_finds_its_turn_committed_by_another_leaves_the_conversation_to_it(worker, tmp_path):
    """Turn 0 was committed by another worker after this one's plan was made (a worker that outlived its lease):
    this one overwrites none of its files and writes no failure record or metadata, which could land after the
    other worker's whole file."""
    from tests.jobs.test_metadata_rows import RecordingStorage, commit

    storage = RecordingStorage(tmp_path / "out")
    worker.writer.storage = storage
    [theirs] = commit(worker.writer, "c", 0)
    files = {k: storage.read_bytes(k) for k in (theirs["audio_path"], theirs["codes_path"])}
    feeder = Feeder()
    feeder.put([conversation("c")])  # planned before turn 0 was committed
    feeder.close()
    storage.log.clear()

    [done] = [e for e in render_all(worker, FeederFeed(feeder, "w1")) if e["event"] == "done"]

    assert "already committed" in done["error"]
    assert {k: storage.read_bytes(k) for k in files} == files
    assert not storage.exists(layout.failure_key("c")) and not storage.exists(layout.metadata_key("c"))
    assert storage.log == [] and feeder.held() == {}


def test_a_worker_given_up_for_dead_writes_no_more_of_its_conversation(worker, tmp_path):
    """After its first turn is committed, the driver gives the worker up for dead (its node seemed gone) and the
    conversation goes to another worker: this one, still running, writes none of the later turns' files, and no
    failure record or metadata."""
    from tests.jobs.test_metadata_rows import RecordingStorage

    storage = RecordingStorage(tmp_path / "out")
    worker.writer.storage = storage
    feeder = Feeder()
    feeder.put([conversation("c")])
    feeder.close()

    class GivenUpAfterOneTurn(FeederFeed):
        def holds(self, conversation_id):
            if storage.exists(layout.commit_key("c", 0)):
                feeder.worker_lost(self.worker)  # what the driver does when it hears the worker died
            return super().holds(conversation_id)

    [done] = [e for e in render_all(worker, GivenUpAfterOneTurn(feeder, "w1")) if e["event"] == "done"]

    assert "no longer this worker's" in done["error"]
    written = {key for op, key in storage.log if op == "write"}
    assert written == {layout.audio_key("c", 0, ".wav"), layout.codes_key("c", 0)}  # turn 0 only
    assert storage.exists(layout.commit_key("c", 0)) and not storage.exists(layout.commit_key("c", 1))
    assert not storage.exists(layout.failure_key("c")) and not storage.exists(layout.metadata_key("c"))
    assert feeder.depth() == 1  # requeued for another worker


@pytest.mark.parametrize("backend", ["cpu", "portable"])
def test_the_backend_asked_for_is_the_one_the_worker_renders_with(csm_cache, tmp_path, backend):
    """`run --backend` (passed on by `submit`) reaches the worker's engine, and the worker says which it has."""
    worker = RenderWorker("random:tiny", str(tmp_path / "out"), device="cpu", batch_size=1, backend=backend)
    assert worker.generator.model.backend.name == backend and worker.info()["backend"] == backend
