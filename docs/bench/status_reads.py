"""Time of `csm-render status` on an OUT of 400 finished conversations when every read is a 20 ms round trip
(as on S3), against a local folder with the delay added. Figures in docs/BENCHMARKS.md.

`python docs/bench/status_reads.py`
"""
import tempfile
import time

import numpy as np

from csm_worker.engine.requests import RenderedTurn
from jobs.storage.outputs import OutputWriter
from jobs.status import job_status
from jobs.storage import LocalStorage

CONVERSATIONS, TURNS, ROUND_TRIP_S = 400, 3, 0.02


class RoundTrips(LocalStorage):
    def read_bytes(self, key):
        time.sleep(ROUND_TRIP_S)
        return super().read_bytes(key)


def fill(storage):
    writer = OutputWriter(storage, "wav", "m")
    for c in range(CONVERSATIONS):
        cid = f"conv-{c:04d}"
        rows = [writer.commit_turn(RenderedTurn(cid, i, 0, "hi", codes=np.zeros((32, 1), dtype=np.int64), seed=1,
                                                end_reason="eos", audio=np.zeros(1920, dtype=np.float32)),
                                   0.9, 50, None) for i in range(TURNS)]
        writer.write_metadata(cid, rows)


with tempfile.TemporaryDirectory() as out:
    fill(LocalStorage(out))
    start = time.perf_counter()
    status = job_status(RoundTrips(out))
    print(f"{status.turns_done} turns, {status.audio_seconds:.1f} s of audio: status took "
          f"{time.perf_counter() - start:.2f} s")
