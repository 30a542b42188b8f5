"""A job's OUT built with the job's own writer (OutputWriter, real WAV/FLAC files and Parquet metadata), no model:
each turn is a few tones at its own level, starting and ending mid-waveform (so a join without a fade clicks)."""

from __future__ import annotations

import zlib

import numpy as np

from csm_worker.engine.requests import RenderedTurn
from csm_worker.quality.checks import TurnQuality
from jobs.storage import LocalStorage, Storage
from jobs.storage.jobrecord import ensure_job_record, fingerprint
from jobs.storage.outputs import OutputWriter

SPF = 1920  # samples per frame at 24 kHz
SR = 24_000


def turn_audio(cid: str, idx: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(f"{cid}/{idx}".encode()))
    t = np.arange(frames * SPF) / SR
    level = rng.uniform(0.05, 0.2)
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(150, 900, size=3))
    return (level * tones / 3 * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def make_job(storage: Storage, conversations: dict[str, list[tuple[int, int | None]]], *, failed=(),
             unfinished=(), audio_format="wav", model="random:tiny", voices=None, qc=None) -> dict[str, list[dict]]:
    """conversations: id -> [(frames, pause_ms), ...] per turn. `failed` ids get a failure record (after their
    rows, as a failed attempt leaves them); `unfinished` ids only commit records (still rendering).
    `voices`: speaker -> the cast voice name its turns were conditioned on (`--voices`).
    `qc`: (conversation, turn) -> the quality checks it failed (() passed); turns not named are unchecked.
    Returns the metadata rows by conversation."""
    ensure_job_record(storage, fingerprint(model, None, audio_format,
                                           {"temperature": 0.9, "top_k": 50, "max_audio_length_ms": 10_000,
                                            "seed": 0}))
    writer = OutputWriter(storage, audio_format, model)
    rows = {}
    for cid, turns in conversations.items():
        rows[cid] = []
        for idx, (frames, pause_ms) in enumerate(turns):
            turn = RenderedTurn(cid, idx, idx % 2, f"Turn {idx} of {cid}, said clearly.",
                                codes=np.full((32, frames), 7), seed=100 + idx, end_reason="eos",
                                audio=turn_audio(cid, idx, frames))
            if qc is not None and (cid, idx) in qc:
                turn.quality = TurnQuality(tuple(qc[(cid, idx)]))
            name = (voices or {}).get(turn.speaker)
            rows[cid].append(writer.commit_turn(turn, 0.9, 50, pause_ms, voice=(name, name and f"hash-{name}")))
        if cid in failed:
            writer.write_failure(cid, "WorkerLost", "its worker died 3 time(s)", 3, len(turns))
        if cid not in unfinished:
            writer.write_metadata(cid, rows[cid])
    return rows


def local_job(tmp_path, conversations, **kw) -> tuple[LocalStorage, dict]:
    storage = LocalStorage(tmp_path / "out")
    return storage, make_job(storage, conversations, **kw)


def snapshot(root) -> dict[str, tuple[bytes, int]]:
    """Every file under `root`: its bytes and mtime (ns), to show a re-run changed nothing. Lease records
    (`locks/`: an export's on DEST while it writes datasets) are bookkeeping, not outputs, and are left out."""
    import os
    from pathlib import Path

    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and "locks" not in path.relative_to(root).parts[:-1]:
            out[str(path.relative_to(root))] = (path.read_bytes(), os.stat(path).st_mtime_ns)
    return out
