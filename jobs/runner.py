"""The driver of `csm-render run`: validate, plan, start Ray workers, follow their progress, summarize.

One obvious loop: each worker (a Ray actor holding one loaded model) streams back small events as it commits
turns; the driver only counts them. Audio never passes through the driver.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from csm_worker.loading import text_encoder_for

from . import layout
from .jobrecord import check_weights, ensure_job_record, fingerprint
from .manifest import ConversationSpec, ManifestError, load_conversations
from .outputs import OutputWriter, committed_turns
from .plan import Defaults, WorkItem, plan
from .progress import Progress
from .remote_manifests import local_manifests
from .storage import Storage, open_storage


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


@dataclass
class Summary:
    conversations: int = 0
    already_complete: int = 0
    turns_rendered: int = 0
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # conversation_id -> error

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
        for cid, err in sorted(self.failed.items()):
            lines.append(f"FAILED {cid}: {err}")
        return "\n".join(lines)


def load_job(cfg: RunConfig) -> list[ConversationSpec]:
    """Validate and load the manifests (raises ManifestError listing every problem; nothing is written)."""
    encoder = text_encoder_for(cfg.model, cfg.revision)
    with local_manifests(cfg.manifests, cfg.s3_endpoint_url) as manifests:
        try:
            conversations = load_conversations(
                manifests.args, text_positions=encoder.counter(),
                default_max_audio_length_ms=cfg.defaults.max_audio_length_ms,
                check_audio=cfg.check_audio and not manifests.has_remote)
        except ManifestError as e:
            raise ManifestError(manifests.problems(e.problems)) from None
        return manifests.conversations(conversations)


def run_job(cfg: RunConfig, conversations: list[ConversationSpec] | None = None) -> Summary:
    started = time.monotonic()
    conversations = conversations if conversations is not None else load_job(cfg)
    storage = open_storage(cfg.out, cfg.s3_endpoint_url)
    storage.remove_leftovers()  # temp files of writes a killed run left (one run per OUT at a time)
    fp = fingerprint(cfg.model, cfg.revision, cfg.audio_format, cfg.defaults.as_dict())
    if cfg.new_run:
        clear_previous_run(storage)
    ensure_job_record(storage, fp, new_run=cfg.new_run)
    committed = committed_turns(storage)
    work, complete = plan(conversations, committed)
    writer = OutputWriter(storage, cfg.audio_format, cfg.model)
    repair_metadata(storage, writer, conversations, work, committed)
    summary = Summary(conversations=len(conversations), already_complete=complete)
    if work:
        _render(cfg, work, summary, writer)
    summary.wall_seconds = time.monotonic() - started
    return summary


def clear_previous_run(storage: Storage) -> None:
    """--new-run: discard the earlier run (commit records first, so no turn stays committed without its files),
    then render every turn with the new settings."""
    for prefix in ("commits/", "metadata/", "failures/", "audio/", "codes/"):
        for key in storage.list(prefix):
            storage.delete(key)


def repair_metadata(storage: Storage, writer: OutputWriter, conversations: list[ConversationSpec],
                    work: list[WorkItem], committed: dict[str, set[int]]) -> None:
    """A run killed between a conversation's last commit and its metadata file leaves the conversation complete
    but without its rows; write them from the commit records."""
    pending = {w.conversation_id for w in work}
    have = set(storage.list("metadata/"))
    for conv in conversations:
        cid = conv.conversation_id
        if cid in pending or layout.metadata_key(cid) in have or not committed.get(cid):
            continue
        writer.write_metadata(cid, [writer.read_commit(cid, i) for i in sorted(committed[cid])])
        writer.clear_failure(cid)


def _render(cfg: RunConfig, work: list[WorkItem], summary: Summary, writer: OutputWriter) -> None:
    import ray

    from .ray_pool import start_workers

    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=cfg.address, include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING)
    try:
        workers = _ready_workers(start_workers(cfg, len(work)), writer.storage)
        shares = [work[i :: len(workers)] for i in range(len(workers))]
        progress = Progress(total_turns=sum(len(w.remaining) for w in work), conversations=len(work))
        streams = {w.render.options(num_returns="streaming").remote(share):
                   {x.conversation_id: len(x.committed) for x in share}
                   for w, share in zip(workers, shares) if share}
        _follow(streams, progress, summary, writer)
        progress.close()
    finally:
        if owns_ray:
            ray.shutdown()


def _ready_workers(workers: list, storage: Storage) -> list:
    """Wait until the workers have loaded the model, and check that the weights match the job's. A worker that
    failed to start is kept in the list: its stream fails at once and its conversations are recorded as failed."""
    import ray

    for i, w in enumerate(workers):
        try:
            info = ray.get(w.info.remote())
        except Exception:
            continue
        print(f"worker {i}: {info['device']} {info['dtype']}, batch size {info['batch_size']}", file=sys.stderr)
        check_weights(storage, info["weights_hash"])
    return workers


def _follow(streams: dict, progress: Progress, summary: Summary, writer: OutputWriter) -> None:
    """Count events from every worker's stream until all end. `streams` maps a stream to the conversations it
    holds; those a worker never reported (it died) are recorded as failed, in OUT too, with the worker's error."""
    import ray

    done: set[str] = set()
    turns: Counter[str] = Counter()  # turns committed in this run, per conversation
    while streams:
        ready, _ = ray.wait(list(streams), num_returns=1, timeout=1.0)
        progress.refresh()
        for stream in ready:
            try:
                event = ray.get(next(stream))
            except StopIteration:
                del streams[stream]
                continue
            except Exception as e:  # the worker died or raised outside a conversation
                held = streams.pop(stream)
                for cid in sorted(set(held) - done):
                    summary.failed[cid] = f"worker failed: {_last_line(e)}"
                    writer.write_failure(cid, "WorkerError", summary.failed[cid], attempts=1,
                                         turns_committed=held[cid] + turns[cid])
                    progress.conversation(failed=True)
                continue
            _count(event, progress, summary, done)
            turns[event["conversation_id"]] += event["event"] == "turn"


def _last_line(e: Exception) -> str:
    # A Ray error carries the worker's whole traceback; its last line names the actual error.
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _count(event: dict, progress: Progress, summary: Summary, done: set[str]) -> None:
    if event["event"] == "turn":
        summary.turns_rendered += 1
        summary.audio_seconds += event["duration_s"]
        progress.turn(event["duration_s"])
    else:
        done.add(event["conversation_id"])
        if event["error"]:
            summary.failed[event["conversation_id"]] = f"{event['error_type']}: {event['error']}"
        progress.conversation(failed=bool(event["error"]))


__all__ = ["ManifestError", "RunConfig", "Summary", "load_job", "run_job"]
