"""`csm-render verify PATH...`: read the watermark back from audio files, folders, an OUT or its exports.

Every audio file found (WAV, FLAC, MP3, Opus/Ogg; inside folders, webdataset .tar shards and hf Parquet shards
too) is decoded, mixed to mono and handed to the watermark's detector, which says whether it reads the key. The
key and weights are the job's (its job record, when the path lies in an OUT), else the reference's key and the
published checkpoint, unless --key / --weights say otherwise.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".opus", ".ogg")


class VerifyError(ValueError):
    """Nothing to verify, or a path that cannot be read (exit 2)."""


@dataclass(frozen=True)
class Clip:
    name: str  # the file, or `shard.tar:member` / `shard.parquet:row`
    data: bytes


def clips(paths: list[str], s3_endpoint_url: str | None = None) -> Iterator[Clip]:
    for raw in paths:
        if raw.startswith("s3://"):
            yield from _s3_clips(raw, s3_endpoint_url)
            continue
        path = Path(raw)
        if not path.exists():
            raise VerifyError(f"{raw}: no such file or folder")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if path.is_dir() and _hidden(f.relative_to(path).as_posix()):
                continue
            yield from _clips_in(str(f), f.name, partial(f.open, "rb"))


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))  # temporary files of writes in flight, caches


def _s3_clips(url: str, s3_endpoint_url: str | None) -> Iterator[Clip]:
    """Every audio file under an s3:// prefix (an OUT, an export), or the one object it names."""
    from jobs.storage import open_storage

    try:
        storage = open_storage(url, s3_endpoint_url)
    except ValueError as e:
        raise VerifyError(str(e)) from None
    found = False
    for key in storage.iter_list(""):
        if not _hidden(key):
            found = True
            yield from _clips_in(f"{storage.url}/{key}", key, partial(_object, storage, key))
    if found:
        return
    parent_url, _, name = storage.url.rpartition("/")
    parent = open_storage(parent_url, s3_endpoint_url) if storage.prefix else None
    if parent is None or not parent.exists(name):
        raise VerifyError(f"{url}: no such object or prefix")
    yield from _clips_in(storage.url, name, partial(_object, parent, name))


def _object(storage, key: str) -> io.BytesIO:
    return io.BytesIO(storage.read_bytes(key))


def _clips_in(name: str, filename: str, open_binary) -> Iterator[Clip]:
    """The clips of one file, `name` as verify prints it; `open_binary()` opens its bytes."""
    lower = filename.lower()
    if lower.endswith(AUDIO_EXTENSIONS):
        with open_binary() as f:
            yield Clip(name, f.read())
    elif lower.endswith(".tar"):  # a webdataset shard
        with open_binary() as f, tarfile.open(fileobj=f) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(AUDIO_EXTENSIONS):
                    yield Clip(f"{name}:{member.name}", tar.extractfile(member).read())
    elif lower.endswith(".parquet"):  # an hf shard holds its audio's bytes; metadata files hold none
        import pyarrow.parquet as pq

        with open_binary() as f:
            table = pq.read_table(f)
        if "audio" in table.column_names:
            for row in table.select(["audio"]).to_pylist():
                yield Clip(f"{name}:{row['audio']['path']}", row["audio"]["bytes"])


def decode(clip: Clip) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(clip.data), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises for anything it cannot parse
        raise VerifyError(f"{clip.name}: cannot decode its audio: {e}") from e
    return samples.mean(axis=1), rate


def job_watermark(paths: list[str], s3_endpoint_url: str | None = None) -> dict:
    """The watermark record of the OUT the first path lies in (its job.json), or {}."""
    for raw in paths:
        record = _s3_job_record(raw, s3_endpoint_url) if raw.startswith("s3://") else _local_job_record(raw)
        if record is not None:
            return record.get("watermark") or {}
    return {}


def _local_job_record(raw: str) -> dict | None:
    for folder in [Path(raw).resolve(), *Path(raw).resolve().parents]:
        record = folder / "job.json"
        if record.is_file():
            try:
                return json.loads(record.read_text())
            except (OSError, ValueError):
                return {}
    return None


def _s3_job_record(url: str, s3_endpoint_url: str | None) -> dict | None:
    """OUT/job.json at the prefix or the nearest prefix above it, in the same bucket."""
    from jobs.storage import open_storage
    from jobs.storage.s3 import parse_s3_url

    bucket, prefix = parse_s3_url(url)
    parts = prefix.split("/") if prefix else []
    for depth in range(len(parts), -1, -1):
        storage = open_storage(f"s3://{bucket}/{'/'.join(parts[:depth])}", s3_endpoint_url)
        if storage.exists("job.json"):
            try:
                return json.loads(storage.read_bytes("job.json"))
            except ValueError:
                return {}
    return None
