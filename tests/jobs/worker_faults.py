"""Faults injected into the Ray render workers of the distributed tests (installed as Ray's
`worker_process_setup_hook`, so it runs in every worker process of the test cluster before any task).

Conversations are made faulty by name only; every other conversation renders normally:
- "crash*": the worker process exits at once when it takes the conversation, as a segfault or an OOM kill would
  (no cleanup, no error event);
- "stall*": the worker's render loop blocks for good, as a wedged GPU or a hung read would.
"""

from __future__ import annotations

import os
import time


def install() -> None:
    from jobs.cluster import worker

    original = worker.RenderWorker._request

    def faulty(self, item, progress):
        if item.conversation_id.startswith("crash"):
            os._exit(1)
        if item.conversation_id.startswith("stall"):
            time.sleep(3600)
        return original(self, item, progress)

    worker.RenderWorker._request = faulty
