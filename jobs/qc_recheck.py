"""`csm-render qc OUT`: check a job's finished turns again with the current settings, without rendering.

With `--qc-asr` a job rendered without it gets its transcripts and error rates (qc_cer, qc_wer, qc_transcript).

Each finished conversation's metadata rows get the new qc_status and qc_failed (qc_attempt and qc_attempts stay:
they say how the turn was rendered); its commit records keep what the render found, as records of that moment.
`status` and `export` read the metadata, so they follow the new result (export rebuilds what changed). Only
conversations with a metadata file (finished) are checked: a running or failed one's is written from its commit
records when it finishes. The run lease is taken first, so a running job and a re-check never write together.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import pyarrow.parquet as pq
import soundfile as sf

import torch
from csm_worker.quality.checks import TurnQuality

from jobs.qc_judge import make_judge
from jobs.qc_options import QcOptions
from jobs.storage import Storage
from jobs.storage.outputs import OutputWriter, qc_result
from jobs.storage.run_lock import RunLock

READERS = 8  # conversations checked at once: on S3 each file is a round trip
SHOWN = 10


@dataclass
class RecheckSummary:
    conversations: int = 0
    turns: int = 0
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # (conversation, turn, failed checks)
    changed: int = 0  # turns whose result differs from what their metadata said

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def text(self) -> str:
        lines = [f"checked {self.turns} turns of {self.conversations} finished conversations: "
                 f"{self.turns - len(self.failed)} passed, {len(self.failed)} failed; {self.changed} changed"]
        worst = sorted(self.failed, key=lambda f: (-len(f[2].split(",")), f[0], f[1]))[:SHOWN]
        lines += [f"QC {cid}/{idx}: {checks}" for cid, idx, checks in worst]
        return "\n".join(lines)


def recheck(storage: Storage, qc: QcOptions = QcOptions(), lock_wait_s: float = 0.0,
            judge: Callable[[list], list[TurnQuality]] | None = None,
            s3_endpoint_url: str | None = None) -> RecheckSummary:
    """Check every finished conversation's turns again and rewrite the metadata files whose results changed.
    `judge`: a batch of turns in, their checks out, as the render loop's (default: jobs.qc_judge.make_judge(qc),
    with the ASR check when qc.asr names a recognizer). A conversation's turns are judged as one batch."""
    judge = judge or make_judge(qc, "cuda" if torch.cuda.is_available() else "cpu", s3_endpoint_url)
    writer = OutputWriter(storage)
    summary = RecheckSummary()
    with RunLock(storage, wait_s=lock_wait_s):
        keys = [k for k in storage.iter_list("metadata/") if k.endswith(".parquet")]
        with ThreadPoolExecutor(READERS) as pool:  # reading is the slow part on S3; judging stays in this thread
            for cid, rows, clips in pool.map(partial(_read_one, storage), keys):
                if not rows:
                    continue
                changed = _judge_rows(judge, rows, clips)
                summary.conversations += 1
                summary.turns += len(rows)
                summary.changed += changed
                summary.failed += [(cid, r["turn_index"], r["qc_failed"] or "") for r in rows
                                   if r["qc_status"] == "fail"]
                if changed:
                    writer.write_metadata(cid, rows)
    return summary


def _read_one(storage: Storage, key: str) -> tuple[str | None, list[dict], list[tuple[object, int]]]:
    """A conversation's metadata rows and each row's decoded audio, (samples, sample rate)."""
    rows = pq.read_table(io.BytesIO(storage.read_bytes(key))).to_pylist()
    cid = rows[0]["conversation_id"] if rows else None  # an empty file: nothing to check or rewrite
    clips = []
    for row in rows:
        try:
            clips.append(sf.read(io.BytesIO(storage.read_bytes(row["audio_path"])), dtype="float32"))
        except sf.LibsndfileError as e:  # nothing is rewritten: the job's files are as they were
            raise OSError(f"{storage.url}/{row['audio_path']}: cannot be decoded ({e})") from None
    return cid, rows, clips


def _judge_rows(judge, rows: list[dict], clips: list) -> int:
    """Set each row's qc result columns from `judge`; returns how many rows' results changed."""
    turns = [SimpleNamespace(audio=samples, sample_rate=rate, text=row["text"], end_reason=row["end_reason"])
             for row, (samples, rate) in zip(rows, clips)]
    changed = 0
    for row, result in zip(rows, judge(turns)):
        new = qc_result(result)
        changed += any(row.get(name) != value for name, value in new.items())
        row.update(new)
        row.setdefault("qc_attempt", 1)
        row.setdefault("qc_attempts", 1)
    return changed
