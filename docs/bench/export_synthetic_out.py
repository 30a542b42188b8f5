"""Write a synthetic job OUT fast, in the job's exact layout (job record, per-turn WAV, codes, commit record,
per-conversation metadata with METADATA_SCHEMA), without a model and without the writer's per-file fsync:
input for docs/bench/export_bench.py.

`python docs/bench/export_synthetic_out.py OUT [CONVERSATIONS=10000] [TURNS=10] [FRAMES=1] [FIRST=0]`
(FIRST: the number of the first conversation, to grow an OUT written before.)
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from jobs.storage import layout
from jobs.storage.jobrecord import fingerprint
from jobs.storage.outputs import METADATA_SCHEMA, codes_to_bytes
from csm_worker.audio import audio_sha256

SPF = 1920


def put(root: str, key: str, data: bytes) -> None:
    path = os.path.join(root, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main(root: str, conversations: int, turns: int, frames: int, first: int = 0) -> None:
    defaults = {"temperature": 0.9, "top_k": 50, "max_audio_length_ms": 10_000, "seed": 0}
    put(root, layout.JOB_RECORD, json.dumps({"fingerprint": fingerprint("random:tiny", None, "wav", defaults),
                                             "created_at": layout.timestamp()}).encode())
    rng = np.random.default_rng(0)
    codes = codes_to_bytes(np.zeros((32, frames), np.int16))
    for c in range(first, first + conversations):
        cid = f"conv-{c:06d}"
        rows = []
        for i in range(turns):
            pcm = (rng.standard_normal(frames * SPF) * 3000).astype(np.int16)
            buf = io.BytesIO()
            sf.write(buf, pcm, 24_000, format="WAV", subtype="PCM_16")
            audio_key, codes_key = layout.audio_key(cid, i, ".wav"), layout.codes_key(cid, i)
            put(root, audio_key, buf.getvalue())
            put(root, codes_key, codes)
            row = {"conversation_id": cid, "turn_index": i, "speaker": i % 2, "text": f"turn {i} of {cid}",
                   "audio_path": audio_key, "codes_path": codes_key, "sample_rate": 24_000,
                   "num_samples": frames * SPF, "duration_s": frames * SPF / 24_000, "num_frames": frames,
                   "end_reason": "eos", "seed": i, "temperature": 0.9, "top_k": 50, "pause_ms": 100,
                   "model": "random:tiny", "sha256": audio_sha256(buf.getvalue()), "rendered_at": "2026-12-02"}
            put(root, layout.commit_key(cid, i), json.dumps(row).encode())
            rows.append(row)
        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=METADATA_SCHEMA), out)
        put(root, layout.metadata_key(cid), out.getvalue())


if __name__ == "__main__":
    args = sys.argv[1:]
    numbers = [int(a) for a in args[1:5]] + [10_000, 10, 1, 0][len(args) - 1:]
    main(args[0], *numbers)
