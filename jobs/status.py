"""`csm-render status OUT`: what a job's output holds, read from OUT alone (works while the job runs)."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow.parquet as pq

from jobs.storage import layout
from jobs.storage.jobrecord import read_job_record
from jobs.storage.outputs import TurnSet, committed_turns
from jobs.storage.run_lock import is_stale, read_holder
from jobs.plan.passes import open_pass, pass_history
from jobs.plan.spool import conversation_totals
from jobs.storage import Storage

SHOWN_QC = 10  # turns that failed the quality checks listed by `status`, the worst first
READERS = 16  # metadata and commit records read at once by `status` (each a round trip on S3)


@dataclass
class JobStatus:
    out: str
    fingerprint: dict | None
    conversations_done: int = 0
    conversations_failed: int = 0
    conversations_pending: int | None = None  # known only when the manifest is given
    turns_done: int = 0
    turns_pending: int | None = None
    audio_seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    running: str | None = None  # the run holding OUT's lease, described (jobs/storage/run_lock.py)
    cast: list[dict] = field(default_factory=list)  # the job's voices (--voices), from the job record
    qc_failed: list[tuple[str, int, str]] = field(default_factory=list)  # (conversation, turn, failed checks)
    qc_retried: int = 0  # turns rendered more than once because an attempt failed the checks
    qc_rescued: int = 0  # of those, the turns whose kept attempt passed
    watermark: dict = field(default_factory=dict)  # the latest run's watermark, from the job record
    passes: list[str] = field(default_factory=list)  # the re-render passes (`run --rerender-failed`), described

    def text(self) -> str:
        lines = [f"output: {self.out}"]
        if self.running:
            lines.append(f"running: {self.running}")
        if self.fingerprint:
            fp = self.fingerprint
            lines.append(f"model: {fp.get('model')}  format: {fp.get('audio_format')}  defaults: {fp.get('defaults')}")
        if self.watermark:
            w = self.watermark
            lines.append("watermark: off (--watermark off)" if w.get("watermark") == "off" else
                         f"watermark: on, key {w.get('watermark_key')}, weights {w.get('watermark_weights')} "
                         f"(sha256 {str(w.get('watermark_sha256'))[:12]})")
        for v in self.cast:
            lines.append(f"voice: speaker {v['speaker']} {v.get('name') or '(no name)'}, {v.get('prompts')} prompt(s), "
                         f"hash {v['hash']}")
        pending = lambda n: "?" if n is None else str(n)
        lines.append(f"conversations: {self.conversations_done} done, {self.conversations_failed} failed, "
                     f"{pending(self.conversations_pending)} pending")
        lines.append(f"turns: {self.turns_done} done, {pending(self.turns_pending)} pending")
        lines.append(f"audio rendered: {self.audio_seconds / 3600:.3f} h ({self.audio_seconds:.1f} s)")
        if self.qc_retried:
            lines.append(f"re-rendered: {self.qc_retried} turns failed a first attempt; {self.qc_rescued} of them "
                         "passed on a later one")
        lines += self.passes
        if self.qc_failed:
            lines.append(f"quality: {len(self.qc_failed)} of {self.turns_done} turns failed the checks (`run "
                         "--rerender-failed` renders them again); the worst:")
        for cid, idx, checks in self.worst_qc():
            lines.append(f"QC {cid}/{idx}: {checks}")
        for cid, err in sorted(self.failures.items()):
            lines.append(f"FAILED {cid}: {err}")
        return "\n".join(lines)

    def worst_qc(self, n: int = SHOWN_QC) -> list[tuple[str, int, str]]:
        """The turns that failed the most checks first (then in conversation and turn order)."""
        return sorted(self.qc_failed, key=lambda f: (-len(f[2].split(",")), f[0], f[1]))[:n]


def job_status(storage: Storage, manifest_files: list[str] | None = None) -> JobStatus:
    """What OUT holds; with the job's (validated) manifest files, also what is pending. The manifests are summed
    per conversation by record batches (jobs.plan.spool.conversation_totals), never loaded whole."""
    record = read_job_record(storage) or {}
    status = JobStatus(out=storage.url, fingerprint=record.get("fingerprint"), cast=record.get("cast") or [],
                       watermark=record.get("watermark") or {})
    holder, now = read_holder(storage), time.time()
    if holder is not None and not holder.released:
        gone = " (gone: no longer renewed, or its process ended)" if is_stale(holder, now) else ""
        status.running = holder.describe(now) + gone
    # In an open re-render pass, the turns it covers are pending until it commits them.
    committed = committed_turns(storage, rerender=open_pass(storage))
    status.passes = pass_history(storage)
    finished = set(storage.iter_list("metadata/"))
    status.turns_done = sum(len(t) for t in committed.values())
    status.audio_seconds, status.qc_failed, status.qc_retried, status.qc_rescued = \
        _turn_stats(storage, committed, finished)
    for key in storage.list("failures/"):
        record = json.loads(storage.read_bytes(key))
        status.failures[record["conversation_id"]] = f"{record['error_type']}: {record['message']}"
    status.conversations_failed = len(status.failures)
    if manifest_files is None:
        status.conversations_done = len(finished - {layout.metadata_key(cid) for cid in status.failures})
        return status
    totals = conversation_totals(manifest_files, committed)
    left = totals["left"].to_numpy()
    ids = totals["conversation_id"].to_numpy(zero_copy_only=False)
    failed = np.isin(ids, list(status.failures))
    # A complete conversation's failure record is stale (a later attempt finished it, and the next run clears it):
    # it is done, not failed.
    for cid in ids[failed & (left == 0)]:
        del status.failures[cid]
    status.conversations_failed = len(status.failures)
    status.turns_pending = int(left.sum())
    status.conversations_done = int((left == 0).sum())
    status.conversations_pending = int(((left > 0) & ~failed).sum())
    return status


def _turn_stats(storage: Storage, committed: dict[str, TurnSet], finished: set[str]) -> tuple[float, list, int, int]:
    """The committed turns' durations, each counted once, those that failed the quality checks, and how many
    were re-rendered and passed then: from a conversation's metadata file where it has one, else (or for turns
    its file lacks) from the commit records. Files are read by a pool of threads: on S3 each read is a round
    trip, and a large job has a file per conversation. `finished`: the metadata files' keys."""
    with ThreadPoolExecutor(READERS) as pool:
        stats = list(pool.map(partial(_conversation_stats, storage, finished), committed.items()))
    return (sum(s[0] for s in stats), [f for s in stats for f in s[1]], sum(s[2] for s in stats),
            sum(s[3] for s in stats))


def _conversation_stats(storage: Storage, finished: set[str], entry: tuple[str, TurnSet]) -> tuple:
    cid, turns = entry
    rows = {}
    if layout.metadata_key(cid) in finished:
        for row in _metadata_rows(storage.read_bytes(layout.metadata_key(cid))):
            if row["turn_index"] in turns:
                rows.setdefault(row["turn_index"], row)
    for idx in turns:
        if idx not in rows:
            rows[idx] = json.loads(storage.read_bytes(layout.commit_key(cid, idx)))
    failed = [(cid, idx, row.get("qc_failed") or "") for idx, row in rows.items() if row.get("qc_status") == "fail"]
    retried = [row for row in rows.values() if (row.get("qc_attempts") or 1) > 1]
    return (sum(row["duration_s"] for row in rows.values()), failed, len(retried),
            sum(row.get("qc_status") == "pass" for row in retried))


def _metadata_rows(data: bytes) -> list[dict]:
    """The columns status needs; files written before the quality checks existed have no qc columns."""
    names = pq.ParquetFile(io.BytesIO(data)).schema_arrow.names
    wanted = [c for c in ("turn_index", "duration_s", "qc_status", "qc_failed", "qc_attempts") if c in names]
    return pq.read_table(io.BytesIO(data), columns=wanted).to_pylist()
