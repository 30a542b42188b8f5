"""The driver of `csm-render run`: validate, plan, start Ray workers, follow their progress, summarize.

Workers (Ray actors, each holding one loaded model) pull conversations from a queue actor and write their
outputs straight to storage; the driver (jobs/cluster/driver.py) feeds the queue, counts the small events the workers
stream back, and replaces workers that die. Audio never passes through the driver.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from jobs.storage import layout
from jobs.storage.jobrecord import check_job_record, ensure_job_record, fingerprint, record_watermark
from jobs.manifests.manifest import ConversationSpec, ManifestError
from jobs.storage.outputs import OutputWriter, committed_turns
from jobs.plan.order import Defaults, WorkItem, plan
from jobs.plan.passes import RenderPass, begin_pass, finish_pass
from jobs.qc_options import QcOptions
from jobs.watermark_options import WatermarkOptions, check_weights_source
from jobs.progress import Progress
from jobs.storage.run_lock import RunLock
from jobs.plan.spool import build_spool
from jobs.storage import Storage, StorageError, open_storage
from jobs.manifests.validation import validated_manifests
from jobs.manifests.voices import Cast, read_cast


@dataclass
class RunConfig:
    manifests: list[str]
    out: str
    model: str
    device: str = "auto"
    dtype: str | None = None
    batch_size: int | str = "auto"
    workers: int | None = None
    address: str | None = None
    audio_format: str = "wav"
    defaults: Defaults = field(default_factory=Defaults)
    new_run: bool = False
    revision: str | None = None
    check_audio: bool = True
    s3_endpoint_url: str | None = None
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs (or --device cuda), else 0
    max_attempts: int = 3  # a conversation leased to this many dying workers is failed
    watchdog_s: float = 900.0  # a worker holding conversations that commits nothing for this long is stopped
    lock_wait_s: float = 140.0  # how long to wait for another run to release OUT (jobs/storage/run_lock.py)
    export: tuple[str, ...] = ()  # run --export: kinds made as conversations complete, then at the end (jobs/export)
    export_options: object = None  # run --export-*: jobs.export.options.ExportOptions (None: export's defaults)
    voices: str | None = None  # --voices: the cast file or folder
    backend: str | None = None  # --backend (csm_worker/backends); None: $CSM_RENDER_BACKEND, else auto
    cast: Cast | None = None  # read from `voices` by run_job; the workers get it with the config
    qc: QcOptions = field(default_factory=QcOptions)  # --qc-retries, --qc-threshold (jobs/qc_options.py)
    watermark: WatermarkOptions = field(default_factory=WatermarkOptions)  # --watermark* (jobs/watermark_options.py)
    rerender_failed: bool = False  # --rerender-failed: a new pass over the finished turns that failed QC
    rerender: RenderPass | None = None  # the pass this run renders (jobs/plan/passes.py), set by run_job


@dataclass
class Summary:
    conversations: int = 0
    already_complete: int = 0
    turns_rendered: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    render_seconds: float = 0.0  # from the first worker ready to the last one done (no start-up, no planning)
    failed: dict[str, str] = field(default_factory=dict)  # conversation_id -> error
    turns_by_worker: dict[str, int] = field(default_factory=dict)  # worker id -> turns it committed
    node_of_worker: dict[str, str] = field(default_factory=dict)  # worker id -> Ray node id it ran on
    workers_lost: int = 0  # workers that died (killed, node gone, watchdog) and were replaced
    exports: str = ""  # run --export: the final export pass's summary
    passes: list[str] = field(default_factory=list)  # what this run did of a re-render pass

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def text(self) -> str:
        rtf = self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0
        lines = [
            f"conversations: {self.conversations} ({self.already_complete} already complete, "
            f"{len(self.failed)} failed)",
            f"turns rendered: {self.turns_rendered}, audio {self.audio_seconds:.1f} s in {self.wall_seconds:.1f} s "
            f"(realtime factor {rtf:.2f})",
        ]
        if self.workers_lost:
            lines.append(f"workers lost and replaced: {self.workers_lost} (their conversations were requeued)")
        for cid, err in sorted(self.failed.items()):
            lines.append(f"FAILED {cid}: {err}")
        lines += self.passes
        if self.exports:
            lines.append(self.exports)
        return "\n".join(lines)


def run_job(cfg: RunConfig, conversations: list[ConversationSpec] | None = None) -> Summary:
    """Render the job: the manifests of `cfg` (validated first: ManifestError lists every problem and nothing is
    written), or the given conversations (tests, the Python API)."""
    started = time.monotonic()
    if cfg.voices and cfg.cast is None:
        cfg.cast = read_cast(cfg.voices, cfg.s3_endpoint_url)  # ManifestError, like the manifests' problems
    with planner(cfg, conversations) as plan_work:
        watermark = check_weights_source(cfg.watermark, cfg.model)  # ModelLoadError before OUT is touched
        storage = open_storage(cfg.out, cfg.s3_endpoint_url)
        fp = fingerprint(cfg.model, cfg.revision, cfg.audio_format, cfg.defaults.as_dict(),
                         cfg.cast.hash if cfg.cast else None)
        if not cfg.new_run:
            check_job_record(storage, fp)  # refuse other settings before touching OUT, the lease included
        with RunLock(storage, wait_s=cfg.lock_wait_s) as lock:
            storage.remove_leftovers(layout.FOLDERS)  # what writes of a killed run left: this run alone holds OUT
            if cfg.new_run:
                clear_previous_run(storage)
            ensure_job_record(storage, fp, new_run=cfg.new_run, cast=cast_record(cfg.cast))
            record_watermark(storage, watermark)  # before any worker starts: no write of job.json mid-run
            cfg.rerender, announced = begin_pass(storage, cfg.rerender_failed)  # an open pass is resumed
            committed = committed_turns(storage, rerender=cfg.rerender)
            work = plan_work(committed)
            writer = OutputWriter(storage, cfg.audio_format, cfg.model, rerender=cfg.rerender)
            repair_metadata(storage, writer, work.complete_ids(), committed, cfg.rerender)
            summary = Summary(conversations=work.conversations, already_complete=work.already_complete,
                              passes=[announced] if announced else [])
            if work.work_conversations:
                _render(cfg, work, summary, writer, lock.check)
                # A worker that died mid-job (killed, node lost, watchdog) may have left temp files of the writes
                # it had in flight; every worker is gone now, so nothing unfinished is anyone's any more, unless
                # another run took OUT over while this one was not heard from.
                if lock.held:
                    storage.remove_leftovers(layout.FOLDERS)
            if cfg.rerender is not None and lock.held:
                summary.passes.append(_close_pass(storage, cfg.rerender))
            if cfg.export:
                from jobs.export.live import final_export
                from jobs.export.options import ExportRequestError

                try:
                    summary.exports = final_export(storage, cfg).text()
                except (ExportRequestError, StorageError, OSError) as e:  # e.g. another export holds the datasets
                    summary.exports = f"export not finished: {e}; the render stands: run `csm-render export " \
                                      f"{cfg.out}` later"
    summary.wall_seconds = time.monotonic() - started
    return summary


@contextmanager
def planner(cfg: RunConfig, conversations: list[ConversationSpec] | None = None):
    """Validate the job's manifests, then yield `plan(committed) -> work`: what is left to render, in plan order
    (longest first), one chunk of conversations at a time (see Work). Manifests are validated and planned by
    record batches, spilled to a scratch folder (jobs/plan/spool.py), so the driver never holds a whole manifest."""
    if conversations is not None:
        yield lambda committed: in_memory_work(conversations, committed)
        return
    with validated_manifests(cfg.manifests, cfg.model, cfg.revision, s3_endpoint_url=cfg.s3_endpoint_url,
                             cast=cfg.cast,
                             default_max_audio_length_ms=cfg.defaults.max_audio_length_ms,
                             check_audio=cfg.check_audio) as (report, manifests):
        with tempfile.TemporaryDirectory(prefix="csm-render-plan-") as scratch:
            yield lambda committed: build_spool(report.files, committed, scratch, audio_name=manifests.name)


@dataclass
class Work:
    """What is left to render, as the driver sees it (jobs.plan.spool.Spool has the same shape): counts, and the planned
    conversations a chunk at a time."""
    conversations: int
    already_complete: int
    work_conversations: int
    turns_to_render: int
    chunks: Callable[[], Iterator[list[WorkItem]]]  # plan order: longest first
    complete_ids: Callable[[], Iterable[str]]  # conversations with nothing left to render


def in_memory_work(conversations: list[ConversationSpec], committed: dict[str, set[int]],
                   chunk: int = 256) -> Work:
    items, complete = plan(conversations, committed)
    pending = {w.conversation_id for w in items}
    return Work(len(conversations), complete, len(items), sum(len(w.remaining) for w in items),
                chunks=lambda: (items[i : i + chunk] for i in range(0, len(items), chunk)),
                complete_ids=lambda: (c.conversation_id for c in conversations if c.conversation_id not in pending))


def _close_pass(storage: Storage, current: RenderPass) -> str:
    short = finish_pass(storage, current)
    if not short:
        return f"re-render pass {current.number}: done"
    return (f"re-render pass {current.number}: left open, {len(short)} conversations not rendered again yet (failed, "
            f"or not in these manifests: {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}); the next run "
            "resumes it")


def cast_record(cast: Cast | None) -> list[dict] | None:
    """The cast as the job record keeps it for `status`: who each voice is, and its hash."""
    if cast is None:
        return None
    return [{"speaker": v.speaker, "name": v.name, "hash": v.hash, "prompts": len(v.prompts)}
            for v in sorted(cast.voices.values(), key=lambda v: v.speaker)]


def clear_previous_run(storage: Storage) -> None:
    """--new-run: discard the earlier run (commit records first, so no turn stays committed without its files),
    then render every turn with the new settings. Exports under OUT/exports/ go too: they were made from the
    discarded turns (an export to another DEST is left alone)."""
    for prefix in ("commits/", "metadata/", "failures/", "audio/", "codes/", layout.PASSES, layout.EXPORTS):
        for key in storage.list(prefix):
            storage.delete(key)


def repair_metadata(storage: Storage, writer: OutputWriter, complete_ids: Iterable[str],
                    committed: dict[str, set[int]], rerender: RenderPass | None = None) -> None:
    """Rewrite, from the commit records, the metadata of complete conversations that a killed run left without
    it (killed between the last commit and the metadata file), or with the rows of an earlier, failed attempt: a
    partial metadata file is only ever written after its failure record, and the failure record is only removed
    after a whole one, so a complete conversation that still has a failure record may have too few rows. In an
    open re-render pass, its conversations' too: one completed in it may still have the earlier pass's rows."""
    have = set(storage.list("metadata/"))
    failed = set(storage.list("failures/"))
    for cid in complete_ids:
        stale = layout.metadata_key(cid) not in have or layout.failure_key(cid) in failed or \
            (rerender is not None and cid in rerender.turns)
        if stale and committed.get(cid):
            writer.write_metadata_from_commits(cid, committed[cid])
            writer.clear_failure(cid)


def _render(cfg: RunConfig, work: Work, summary: Summary, writer: OutputWriter,
            check: Callable[[], None]) -> None:
    """Render `work` on Ray; `check` raises to stop the job (OUT's lease lost)."""
    import ray

    from jobs.cluster.driver import Driver
    from jobs.cluster.ray_pool import connect, plan_workers, start_feeder

    owns_ray = not ray.is_initialized()
    if owns_ray:  # connect: ray.init, a token-secured cluster's token checked first (jobs/cluster/auth.py)
        connect(cfg.address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    try:
        count, resources = plan_workers(cfg, work.work_conversations)
        progress = Progress(total_turns=work.turns_to_render, conversations=work.work_conversations)
        driver = Driver(cfg, resources, start_feeder(cfg.max_attempts), writer, progress, summary, work.chunks(),
                        check)
        driver.run(count)
        progress.close()
    finally:
        if owns_ray:
            ray.shutdown()


__all__ = ["ManifestError", "RunConfig", "Summary", "run_job"]
