"""The work queue the workers pull conversations from, with leases, so that no conversation is lost or run twice.

Workers take one conversation each time their engine has a free slot, so every engine stays full and a fast
worker simply takes more. Each taken conversation is leased to its worker until the worker reports it finished.
When a worker dies (process killed, node gone, watchdog), the driver hands its leases back: they go to the front
of the queue and continue from their last committed turn, which the next worker reads from OUT.

A conversation that was leased to a dead worker is a suspect: it may be the one that killed it. A conversation
that is leased when workers die `max_attempts` times is failed. So that innocent conversations that merely
shared a worker with a poisonous one are not failed with it, a conversation's last attempt runs alone: it is
given only to a worker holding nothing else, and that worker takes nothing more until it is finished.

Plain Python (the runner wraps it in a Ray actor), so it can be tested without Ray.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


class FeederLost(RuntimeError):
    """The queue actor died (its process killed, its node lost): the leases it held, which say what each worker
    is rendering, are gone with it. The job stops; OUT's commit records say what is done, so a re-run resumes
    exactly where this one stopped."""


@dataclass
class Lease:
    item: object  # a jobs.plan.order.WorkItem (kept opaque: the feeder only moves it around)
    attempts: int  # attempts so far, this one included


class Feeder:
    def __init__(self, max_attempts: int = 3):
        self.max_attempts = max(1, max_attempts)
        self.queue: deque[Lease] = deque()  # first attempts and retries that may share a worker
        self.last_chances: deque[Lease] = deque()  # final attempts: each runs alone on its worker
        self.leases: dict[str, dict[str, Lease]] = {}  # worker id -> conversation id -> lease
        self.alone: set[str] = set()  # workers running a final attempt, taking nothing else meanwhile
        self.closed = False  # the driver has put every planned conversation
        self.last_seen: dict[str, float] = {}  # worker id -> when it last took or finished a conversation

    # -- the driver's side ------------------------------------------------------------------------------------
    def put(self, items: list) -> None:
        self.queue.extend(Lease(item, 1) for item in items)

    def close(self) -> None:
        self.closed = True

    def depth(self) -> int:
        """Conversations waiting to be taken."""
        return len(self.queue) + len(self.last_chances)

    def held(self) -> dict[str, int]:
        """Conversations leased, per worker."""
        return {w: len(held) for w, held in self.leases.items() if held}

    def activity(self) -> dict[str, tuple[int, float]]:
        """Per worker holding conversations: how many, and when it last took or finished one (monotonic
        clock of this node). A worker that just took a conversation after idling has not stalled."""
        return {w: (len(held), self.last_seen.get(w, 0.0)) for w, held in self.leases.items() if held}

    def drain(self) -> list[tuple[object, int]]:
        """Everything not finished, as (item, attempts), emptying the queue: for a job that lost every worker."""
        left = [(lease.item, lease.attempts) for lease in (*self.queue, *self.last_chances)]
        left += [(lease.item, lease.attempts) for held in self.leases.values() for lease in held.values()]
        self.queue.clear()
        self.last_chances.clear()
        self.leases.clear()
        self.alone.clear()
        return left

    def worker_lost(self, worker: str) -> list[tuple[object, int]]:
        """Hand back a dead worker's leases. Returns (item, attempts) for those out of attempts: the caller
        records them as failed; the rest are queued again, ahead of new work."""
        self.alone.discard(worker)
        self.last_seen.pop(worker, None)
        exhausted, retries = [], []
        for lease in self.leases.pop(worker, {}).values():  # in the order the worker took them: plan order
            if lease.attempts >= self.max_attempts:
                exhausted.append((lease.item, lease.attempts))
                continue
            retry = Lease(lease.item, lease.attempts + 1)
            if retry.attempts == self.max_attempts and self.max_attempts > 1:
                self.last_chances.append(retry)
            else:
                retries.append(retry)
        self.queue.extendleft(reversed(retries))  # ahead of new work, keeping their order
        return exhausted

    # -- the workers' side ------------------------------------------------------------------------------------
    def take(self, worker: str) -> tuple[object, int] | None | bool:
        """The next conversation for `worker` as (item, attempt), False when there is none for it right now
        (ask again later), None when the job has no more work for anyone (the worker can finish)."""
        held = self.leases.setdefault(worker, {})
        if worker in self.alone:
            return False
        if self.last_chances and not held:
            return self._lease(worker, self.last_chances.popleft(), alone=True)
        if self.queue:
            return self._lease(worker, self.queue.popleft())
        if self.closed and not self.last_chances:
            return None
        return False

    def holds(self, worker: str, conversation_id: str) -> bool:
        """Whether the conversation is still leased to `worker`: not when the driver gave the worker up for dead
        (its leases went to others) while it was in fact still running, e.g. on a node cut off from the cluster."""
        return conversation_id in self.leases.get(worker, {})

    def finish(self, worker: str, conversation_id: str) -> None:
        """The worker has written everything of this conversation (its turns, metadata or failure record)."""
        self.leases.get(worker, {}).pop(conversation_id, None)
        self.last_seen[worker] = time.monotonic()
        if not self.leases.get(worker):
            self.alone.discard(worker)

    def _lease(self, worker: str, lease: Lease, alone: bool = False) -> tuple[object, int]:
        # Only a granted lease counts as activity: a worker that keeps asking and getting nothing while it
        # holds conversations it never finishes is stalled, and the driver's watchdog must see that.
        self.last_seen[worker] = time.monotonic()
        self.leases[worker][lease.item.conversation_id] = lease
        if alone:
            self.alone.add(worker)
        return lease.item, lease.attempts
