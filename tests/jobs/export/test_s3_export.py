"""Export with OUT on S3 (moto's real HTTP server): read through the storage layer, written under
OUT/exports/ or an s3:// DEST, every object whole; a re-run writes nothing."""

from __future__ import annotations

import io
import json
import tarfile

import soundfile as sf

from jobs.export.options import KINDS
from jobs.storage.s3 import S3Storage

from .helpers import make_job
from .test_conversations import export

JOB = {"a": [(2, None), (3, 0)], "b": [(1, 200)], "gone": [(2, None)]}


def objects(raw, bucket, prefix):
    """Keys and ETags under `prefix`, without lease records (`exports/locks/`: the dataset pass's lease)."""
    pages = raw.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for p in pages for o in p.get("Contents", ()) if "/locks/" not in o["Key"]}


def test_s3_export_and_rerun(raw, bucket):
    storage = S3Storage(f"s3://{bucket}/job")
    rows = make_job(storage, JOB, failed={"gone"})
    summary, _ = export(storage, kinds=KINDS, audio_format="flac")
    assert summary.complete == 2 and set(summary.failed) == {"gone"} and not summary.errors

    got = objects(raw, bucket, "job/exports/")
    assert {k for k in got if k.startswith("job/exports/conversations/")} == {
        f"job/exports/conversations/{c}.{e}" for c in ("a", "b") for e in ("flac", "json")}
    body = raw.get_object(Bucket=bucket, Key="job/exports/conversations/a.flac")["Body"].read()
    audio, _ = sf.read(io.BytesIO(body), dtype="int16")
    assert len(audio) == sum(r["num_samples"] for r in rows["a"]) + 400 * 24
    tar = raw.get_object(Bucket=bucket, Key="job/exports/webdataset/shard-000000.tar")["Body"].read()
    names = tarfile.open(fileobj=io.BytesIO(tar)).getnames()
    assert names == ["a/000000.json", "a/000000.wav", "a/000001.json", "a/000001.wav", "b/000000.json",
                     "b/000000.wav"]
    hf = json.loads(raw.get_object(Bucket=bucket, Key="job/exports/hf/_export.json")["Body"].read())
    assert hf["splits"]["train"]["rows"] == 3
    assert not raw.list_multipart_uploads(Bucket=bucket).get("Uploads")

    summary, _ = export(storage, kinds=KINDS, audio_format="flac")
    assert objects(raw, bucket, "job/exports/") == got and summary.exported == {}


def test_s3_dest_elsewhere_in_the_bucket(raw, bucket):
    storage = S3Storage(f"s3://{bucket}/job")
    make_job(storage, JOB)
    export(storage, kinds=("captions",), dest=f"s3://{bucket}/deliverables/ep1")
    assert set(objects(raw, bucket, "deliverables/")) == {
        f"deliverables/ep1/captions/{c}.{e}" for c in ("a", "b", "gone") for e in ("srt", "vtt", "json")}
    assert not objects(raw, bucket, "job/exports/")
