"""Storage.upload_file, the streaming write export's shards and episodes go through: whole or absent under the final
name, on a local folder and on S3 (moto's server; a file over the multipart threshold goes up in parts)."""

from __future__ import annotations

import hashlib
import os

import pytest

from jobs.storage import LocalStorage
from jobs.storage.s3 import S3Storage


def big_file(tmp_path, size: int):
    path = tmp_path / "shard.bin"
    path.write_bytes(os.urandom(size))
    return path


def test_local_upload_replaces_whole_and_leaves_no_temp(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    storage.write_bytes("exports/x.tar", b"old")
    src = big_file(tmp_path, 3 * 1024 * 1024 + 5)
    storage.upload_file("exports/x.tar", str(src))
    assert (tmp_path / "out/exports/x.tar").read_bytes() == src.read_bytes()
    assert os.listdir(tmp_path / "out/exports") == ["x.tar"]


def test_local_upload_of_a_missing_file_leaves_the_old_object(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    storage.write_bytes("exports/x.tar", b"old")
    with pytest.raises(FileNotFoundError):
        storage.upload_file("exports/x.tar", str(tmp_path / "nope"))
    assert storage.read_bytes("exports/x.tar") == b"old" and storage.list("exports/") == ["exports/x.tar"]


def test_s3_upload_goes_up_in_parts_above_the_threshold(raw, bucket):
    storage = S3Storage(f"s3://{bucket}/job", multipart_threshold=5 * 1024 * 1024)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        src = big_file(Path(folder), 11 * 1024 * 1024 + 7)  # three parts: 5, 5 and 1 MiB
        storage.upload_file("exports/hf/data/train-000000.parquet", str(src))
        data = src.read_bytes()
    got = raw.get_object(Bucket=bucket, Key="job/exports/hf/data/train-000000.parquet")
    assert got["Body"].read() == data
    assert got["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag counts its parts
    assert got["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert not raw.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_s3_small_upload_is_one_put(raw, bucket, tmp_path):
    storage = S3Storage(f"s3://{bucket}/job")
    src = big_file(tmp_path, 1000)
    storage.upload_file("exports/a.json", str(src))
    assert storage.read_bytes("exports/a.json") == src.read_bytes()
