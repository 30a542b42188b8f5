"""webdataset: tar shards the `webdataset` package iterates, one sample per rendered turn, bounded size,
byte-identical when made again."""

from __future__ import annotations

import io
import json

import soundfile as sf
import webdataset as wds

from .helpers import SR, local_job
from .test_conversations import export
from .test_hf import JOB


def test_webdataset_iterates_every_turn(tmp_path):
    storage, rows = local_job(tmp_path, {**JOB, "has.dots": [(2, None), (3, None)]})
    export(storage, kinds=("webdataset",), max_shard_mb=0.05)
    folder = tmp_path / "out/exports/webdataset"
    shards = sorted(str(p) for p in folder.glob("shard-*.tar"))
    assert len(shards) > 1 and shards[0].endswith("shard-000000.tar")
    assert all((folder / p).stat().st_size <= 0.05 * 1024 * 1024 for p in shards)

    samples = list(wds.WebDataset(shards, shardshuffle=False))
    expected = [(cid, r["turn_index"]) for cid in sorted(rows) for r in rows[cid]]
    assert [tuple(json.loads(s["json"])[k] for k in ("conversation_id", "turn_index")) for s in samples] == expected
    for s in samples:
        meta = json.loads(s["json"])
        assert s["__key__"] == f"{meta['conversation_id']}/{meta['turn_index']:06d}"
        audio, rate = sf.read(io.BytesIO(s["wav"]), dtype="int16")
        assert rate == SR and len(audio) == meta["num_samples"]
        assert s["wav"] == storage.read_bytes(meta["audio_path"])


def test_the_same_out_gives_byte_identical_shards(tmp_path):
    storage, _ = local_job(tmp_path, JOB)
    export(storage, kinds=("webdataset",), dest=str(tmp_path / "a"))
    export(storage, kinds=("webdataset",), dest=str(tmp_path / "b"))
    a = (tmp_path / "a/webdataset/shard-000000.tar").read_bytes()
    assert a == (tmp_path / "b/webdataset/shard-000000.tar").read_bytes()
