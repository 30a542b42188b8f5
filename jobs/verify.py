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
from pathlib import Path

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".opus", ".ogg")


class VerifyError(ValueError):
    """Nothing to verify, or a path that cannot be read (exit 2)."""


@dataclass(frozen=True)
class Clip:
    name: str  # the file, or `shard.tar:member` / `shard.parquet:row`
    data: bytes


def clips(paths: list[str]) -> Iterator[Clip]:
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise VerifyError(f"{raw}: no such file or folder")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if any(part.startswith(".") for part in f.relative_to(path).parts) if path.is_dir() else False:
                continue  # temporary files of writes in flight, caches
            yield from _clips_in(f)


def _clips_in(f: Path) -> Iterator[Clip]:
    name = f.name.lower()
    if name.endswith(AUDIO_EXTENSIONS):
        yield Clip(str(f), f.read_bytes())
    elif name.endswith(".tar"):  # a webdataset shard
        with tarfile.open(f) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(AUDIO_EXTENSIONS):
                    yield Clip(f"{f}:{member.name}", tar.extractfile(member).read())
    elif name.endswith(".parquet"):  # an hf shard holds its audio's bytes; metadata files hold none
        import pyarrow.parquet as pq

        table = pq.read_table(f)
        if "audio" in table.column_names:
            for row in table.select(["audio"]).to_pylist():
                yield Clip(f"{f}:{row['audio']['path']}", row["audio"]["bytes"])


def decode(clip: Clip) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(clip.data), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises for anything it cannot parse
        raise VerifyError(f"{clip.name}: cannot decode its audio: {e}") from e
    return samples.mean(axis=1), rate


def job_watermark(paths: list[str]) -> dict:
    """The watermark record of the OUT the first path lies in (its job.json), or {}."""
    for raw in paths:
        for folder in [Path(raw).resolve(), *Path(raw).resolve().parents]:
            record = folder / "job.json"
            if record.is_file():
                try:
                    return json.loads(record.read_text()).get("watermark") or {}
                except (OSError, ValueError):
                    return {}
    return {}
