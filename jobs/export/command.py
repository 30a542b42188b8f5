"""One export pass over a job's OUT: what `csm-render export` and `run --export` do.

Pass 1 goes over the complete conversations, one at a time: each per-conversation kind is made unless its record
says it is up to date, and a running hash of (conversation, metadata hash) says whether the datasets changed.
Pass 2, only for a dataset kind whose hash differs from its record, keeps the shards whose conversations did not
change and writes new shards for the others (shard_plan.py), reading each conversation's audio once for all the
dataset kinds asked. Failed and unfinished conversations are left out
and listed; a conversation whose files cannot be read is left out whole and named, and the others go on.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from jobs.storage import TMP_PREFIX, LocalStorage, Storage, open_storage

from jobs.export import per_conversation
from jobs.export.destination import open_dest
from jobs.export import hf_dataset, webdataset_shards
from jobs.export.hf_dataset import SPLITS, HfDataset, dataset_card, license_for, split_of
from jobs.export.options import KINDS, PER_CONVERSATION, ExportOptions, ExportRequestError, check_options
from jobs.export.reader import ExportError, JobView, iter_conversations
from jobs.export.shard_plan import plan_shards, recorded_keys, short, usable_entries
from jobs.export.shards import remove_stale
from jobs.export.webdataset_shards import TarShards, sample_files, sample_key

DATASET_SETTINGS = {"hf": ("max_shard_mb", "validation_fraction", "license", "include_failed_qc"),
                    "webdataset": ("max_shard_mb", "include_failed_qc")}
_SHOWN = 10  # conversations named per line of the summary
TEMP_MAX_AGE_S = 3600.0  # an export's temporary file this old was left by a killed export, not one still going
DATASETS_LOCK_WAIT_S = 150.0  # for another export's dataset pass to end (or its lease to expire), then exit 2


@dataclass
class ExportSummary:
    dest: str
    kinds: tuple[str, ...]
    complete: int = 0
    exported: dict[str, int] = field(default_factory=dict)  # kind -> conversations made in this pass
    unchanged: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)  # kind -> what happened, in words
    failed: dict[str, str] = field(default_factory=dict)  # left out: the job failed them
    in_progress: list[str] = field(default_factory=list)  # left out: still rendering (or never finished)
    errors: dict[str, str] = field(default_factory=dict)  # left out: their files could not be exported

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def text(self) -> str:
        lines = [f"export to {self.dest}: {self.complete} complete conversation(s)"]
        for kind in self.kinds:
            if kind in self.datasets:
                lines.append(f"  {kind}: {self.datasets[kind]}")
            else:
                lines.append(f"  {kind}: {self.exported.get(kind, 0)} exported, {self.unchanged.get(kind, 0)} "
                             "already up to date")
        if self.failed:
            lines.append(f"skipped {len(self.failed)} failed conversation(s) (not exported; see `csm-render "
                         "status`):")
            lines += [f"  {cid}: {why}" for cid, why in sorted(self.failed.items())[:_SHOWN]]
            lines += [f"  ... and {len(self.failed) - _SHOWN} more"] if len(self.failed) > _SHOWN else []
        if self.in_progress:
            shown = ", ".join(self.in_progress[:_SHOWN]) + (" ..." if len(self.in_progress) > _SHOWN else "")
            lines.append(f"skipped {len(self.in_progress)} conversation(s) not finished yet (export again when "
                         f"the job has done them): {shown}")
        for cid, err in sorted(self.errors.items()):
            lines.append(f"ERROR {cid}: {err} (left out of every export)")
        return "\n".join(lines)


def prepare(out: str, dest: str | None, opts: ExportOptions, s3_endpoint_url: str | None = None
            ) -> tuple[JobView, Storage]:
    """Check the request and open both ends; ExportRequestError (nothing written) when it cannot be done."""
    check_options(opts)
    try:
        storage = open_storage(out, s3_endpoint_url)
    except ValueError as e:
        raise ExportRequestError(f"{out}: {e}") from None
    view = JobView(storage)
    return view, open_dest(storage, dest, s3_endpoint_url)


def export_job(view: JobView, dest: Storage, opts: ExportOptions) -> ExportSummary:
    remove_old_temps(dest)
    scan = view.scan()
    summary = ExportSummary(dest.url, opts.kinds, failed=scan.failed, in_progress=scan.in_progress)
    given = None
    if opts.include_given:
        from jobs.export.given import given_turns

        given = given_turns(list(opts.manifests))
    dataset_kinds = [k for k in opts.kinds if k in DATASET_SETTINGS]
    with tempfile.TemporaryDirectory(prefix="csm-render-export-") as scratch:
        digests = {k: _dataset_digest(k, opts, view) for k in dataset_kinds}
        sources: dict[str, str] = {}  # conversation -> short metadata hash, for the datasets' shard plans
        qc_failed = 0  # turns of the exported conversations that failed the quality checks
        for item in iter_conversations(view, scan.complete, given):
            if isinstance(item, ExportError):
                summary.errors[item.conversation_id] = str(item)
                continue
            if export_one(view, dest, item, opts, scratch, summary):
                summary.complete += 1
                sources[item.conversation_id] = short(item.source)
                _hash_conversation(digests, item.conversation_id, sources[item.conversation_id])
                qc_failed += sum(1 for r in item.rows if failed_qc(r))
        if dataset_kinds:
            with _datasets_lock(dest) as guard:
                stale = [k for k in dataset_kinds
                         if _dataset_source(dest, k) != digests[k].hexdigest() or _missing_shards(dest, k)]
                for kind in dataset_kinds:
                    if kind not in stale:
                        summary.datasets[kind] = "already up to date"
                if stale:
                    qc = {"include_failed": opts.include_failed_qc, "failed_turns": qc_failed}
                    _write_datasets(view, dest, opts, stale, sources, scratch, summary, guard, qc)
                # Also when up to date: a kill after a record may have left files it does not name, or the
                # card of a build that never got its record.
                guard()
                for kind in dataset_kinds:
                    _remove_unrecorded(dest, kind)
                if "hf" in dataset_kinds:
                    _write_card(view, dest, opts)
    return summary


@contextmanager
def _datasets_lock(dest: Storage):
    """One export at a time writes a DEST's datasets: two would plan from the same record, and one's clean-up
    could remove the other's new shards. The same lease a run takes on OUT (run_lock.py), here on DEST."""
    from jobs.storage.run_lock import OutInUse, RunLock

    lock = RunLock(dest, wait_s=DATASETS_LOCK_WAIT_S)
    try:
        lock.acquire()
    except OutInUse as e:
        raise ExportRequestError(f"another export is writing the datasets in {dest.url}; try again when it has "
                                 f"finished ({e})") from None

    def guard() -> None:
        """Before each write another export could be making too (a shard, a record, the clean-up): still ours?
        An export paused past the lease's ttl (a suspended host) must stop, not write over its successor's."""
        lock.renew()
        if lock.lost_to is not None:
            raise ExportRequestError(f"this export lost the datasets in {dest.url} to another export (it was not "
                                     f"heard from for {lock.ttl_s:.0f} s) and stopped; that export finishes them")

    try:
        yield guard
    finally:
        lock.release()


def export_one(view: JobView, dest: Storage, conv, opts: ExportOptions, scratch: str,
               summary: ExportSummary) -> bool:
    """The per-conversation kinds of one complete conversation; False (and the error noted) when it fails."""
    try:
        for kind in (k for k in opts.kinds if k in PER_CONVERSATION):
            if per_conversation.up_to_date(dest, kind, conv, opts):
                summary.unchanged[kind] = summary.unchanged.get(kind, 0) + 1
                continue
            if kind == "conversations":
                per_conversation.export_audio(view, dest, conv, opts, scratch)
            else:
                per_conversation.export_captions(view, dest, conv, opts)
            summary.exported[kind] = summary.exported.get(kind, 0) + 1
    except (ExportError, FileNotFoundError, ValueError) as e:
        summary.errors[conv.conversation_id] = str(e)
        return False
    return True


def failed_qc(row: dict) -> bool:
    """Whether a metadata row's turn failed the quality checks (rows from before the checks have no qc_status)."""
    return row.get("qc_status") == "fail"


def _write_datasets(view: JobView, dest: Storage, opts: ExportOptions, kinds: list[str], sources: dict[str, str],
                    scratch: str, summary: ExportSummary, guard, qc: dict) -> None:
    """The stale dataset kinds: their unchanged shards kept, new shards for the rest, then each record (the
    caller then removes the shards no record names). `guard()` before each write: the lease is still ours.
    Turns that failed the quality checks are left out unless opts.include_failed_qc; `qc` goes in the records
    (the card says what was left out)."""
    max_bytes = int(opts.max_shard_mb * 1024 * 1024)
    hf, tars = _dataset_writers(view, dest, opts, kinds, sources, scratch, max_bytes, guard)
    writers = [w for w in (hf, tars) if w]
    todo = sorted(cid for cid in sources if any(w.wants(cid) for w in writers))
    digests = {k: _dataset_digest(k, opts, view) for k in kinds}
    seen = set()
    try:
        for conv in iter_conversations(view, todo):
            seen.add(conv.conversation_id)
            if isinstance(conv, ExportError) or conv.conversation_id in summary.errors:
                continue
            rows = [r for r in conv.rows if opts.include_failed_qc or not failed_qc(r)]
            try:
                audio = [view.audio_bytes(r) for r in rows]
                for row, data in zip(rows, audio):
                    view.audio_pcm(row, data)  # decodes and matches its row: a bad file leaves the whole out
            except (ExportError, FileNotFoundError) as e:
                summary.errors[conv.conversation_id] = str(e)
                continue
            if hf and hf.wants(conv.conversation_id):
                hf.add_conversation(rows, audio, conv.source)
            if tars and tars.wants(conv.conversation_id):
                tars.add_conversation(conv.conversation_id, conv.source,
                                      [(sample_key(row), sample_files(row, data)) for row, data in zip(rows, audio)])
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for cid in set(todo) - seen:  # its metadata went away since pass 1 (a --new-run): in no shard, so not counted
        summary.errors[cid] = "its metadata is gone since this export began (a new run of the job?)"
    conversations = 0  # in the datasets: kept or written now (all of pass 1's but any left out since)
    for cid, source in sources.items():  # hashed as pass 1 hashes them
        if cid not in summary.errors:
            conversations += 1
            _hash_conversation(digests, cid, source)
    settings = {k: _dataset_settings(k, opts, view) for k in kinds}
    if hf:
        splits = hf.finish()
        guard()
        _write_record(dest, "hf", digests["hf"].hexdigest(), {
            "settings": settings["hf"], "splits": splits, "conversations": conversations, "qc": qc})
        rows = sum(c["rows"] for c in splits.values())
        shards = sum(len(c["shards"]) for c in splits.values())
        summary.datasets["hf"] = f"{rows} turns of {conversations} conversations in {shards} shard(s)" + \
            _reuse(sum(len(hf.plans[s].kept) for s in SPLITS)) + _left_out(qc)
    if tars:
        entries = tars.finish()
        guard()
        _write_record(dest, "webdataset", digests["webdataset"].hexdigest(), {
            "settings": settings["webdataset"], "shards": entries, "samples": tars.samples,
            "conversations": conversations, "qc": qc})
        summary.datasets["webdataset"] = f"{tars.samples} samples of {conversations} conversations in " \
                                         f"{len(entries)} shard(s)" + _reuse(len(tars.plan.kept)) + _left_out(qc)


def _dataset_writers(view: JobView, dest: Storage, opts: ExportOptions, kinds: list[str], sources: dict[str, str],
                     scratch: str, max_bytes: int, guard) -> tuple[HfDataset | None, TarShards | None]:
    """Each kind's writer, with the plan its record allows (nothing kept when the settings changed)."""
    hf = tars = None
    if "hf" in kinds:
        record, settings = _read_record(dest, "hf"), _dataset_settings("hf", opts, view)
        by_split = {s: {c: src for c, src in sources.items() if split_of(c, opts.validation_fraction) == s}
                    for s in SPLITS}
        plans = {s: plan_shards(usable_entries(record, settings, ("splits", s)), by_split[s], _shard_files(dest, "hf", s))
                 for s in SPLITS}
        hf = HfDataset(dest, scratch, max_bytes, opts.validation_fraction, view.storage.url, plans, guard)
    if "webdataset" in kinds:
        record, settings = _read_record(dest, "webdataset"), _dataset_settings("webdataset", opts, view)
        tars = TarShards(dest, scratch, max_bytes,
                         plan_shards(usable_entries(record, settings), sources, _shard_files(dest, "webdataset")), guard)
    return hf, tars


def _shard_files(dest: Storage, kind: str, split: str | None = None) -> list[str]:
    """The shard files of a dataset (one hf split) in DEST, whatever wrote them."""
    if kind == "hf":
        return [k for k in dest.list(f"{hf_dataset.PREFIX}data/{split}-") if hf_dataset.is_shard(k)]
    return [k for k in dest.list(webdataset_shards.PREFIX) if webdataset_shards.is_shard(k)]


def _write_card(view: JobView, dest: Storage, opts: ExportOptions) -> None:
    """hf/README.md as the record describes the dataset, written when it says anything else (written after
    the record, so a kill in between, or a killed build of other settings, leaves a card the next export mends)."""
    record = _read_record(dest, "hf")
    if not record or "splits" not in record:
        return
    license_id = opts.license or license_for(view.fingerprint.get("model", ""))
    counts = {s: {k: record["splits"].get(s, {}).get(k, 0) for k in ("rows", "seconds", "bytes")} for s in SPLITS}
    card = dataset_card(counts, view.fingerprint, license_id, record.get("conversations", 0),
                        record.get("qc")).encode()
    key = f"{hf_dataset.PREFIX}README.md"
    try:
        if dest.read_bytes(key) == card:
            return
    except FileNotFoundError:
        pass
    dest.write_bytes(key, card)


def _missing_shards(dest: Storage, kind: str) -> bool:
    """Whether a shard the record names is not there (removed by hand, or by another export's clean-up): the
    dataset is then written again, whatever its hash says."""
    return not set(_recorded(dest, kind) or []) <= set(_present(dest, kind))


def _remove_unrecorded(dest: Storage, kind: str) -> None:
    """Remove the dataset's shard files its record does not name: shards written again elsewhere, and those of
    a killed export. Nothing without a record in this format (what it names is not known)."""
    keys = _recorded(dest, kind)
    if keys is None:
        return
    module = hf_dataset if kind == "hf" else webdataset_shards
    prefix = f"{hf_dataset.PREFIX}data/" if kind == "hf" else webdataset_shards.PREFIX
    remove_stale(dest, prefix, keys, module.is_shard)


def _recorded(dest: Storage, kind: str) -> list[str] | None:
    """Every shard key the dataset's record names (all hf splits); None without a record in this format."""
    record = _read_record(dest, kind)
    keys = [recorded_keys(record, path) for path in ([("splits", s) for s in SPLITS] if kind == "hf" else [()])]
    return None if any(k is None for k in keys) else [key for ks in keys for key in ks]


def _present(dest: Storage, kind: str) -> list[str]:
    """Every shard file of the dataset in DEST (all hf splits)."""
    return [k for s in SPLITS for k in _shard_files(dest, "hf", s)] if kind == "hf" else _shard_files(dest, kind)


def _left_out(qc: dict) -> str:
    if not qc["failed_turns"] or qc["include_failed"]:
        return ""
    return f"; {qc['failed_turns']} turn(s) that failed the quality checks left out (--include-failed-qc keeps them)"


def _reuse(kept: int) -> str:
    return f" ({kept} kept from the last export)" if kept else ""


def remove_old_temps(dest: Storage) -> None:
    """Temporary files a killed export left in a local DEST's export folders (only those: a DEST may be a folder
    above OUT, whose own files are the job's). Only old ones: another export, or run --export, may be writing its
    own right now. (On S3 an unfinished upload is invisible; a bucket lifecycle rule that aborts incomplete
    multipart uploads clears them.)"""
    if not isinstance(dest, LocalStorage):
        return
    cutoff = time.time() - TEMP_MAX_AGE_S
    for kind in KINDS:
        for folder, _, names in os.walk(os.path.join(dest.url, kind)):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    if name.startswith(TMP_PREFIX) and os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                except FileNotFoundError:
                    continue


def _dataset_settings(kind: str, opts: ExportOptions, view: JobView) -> str:
    """What a dataset's shards depend on besides its conversations: its options, and for hf OUT's URL (each row's
    codes_path points into OUT), so an OUT reached another way rebuilds rather than mixing paths."""
    settings = opts.settings_hash(*DATASET_SETTINGS[kind])
    if kind == "hf":
        settings = hashlib.sha256(f"{settings}\0{view.storage.url}".encode()).hexdigest()[:16]
    return settings


def _hash_conversation(digests: dict, conversation_id: str, source: str) -> None:
    """A dataset's hash covers each conversation in it with its short metadata hash, in plan order."""
    for digest in digests.values():
        digest.update(f"{conversation_id}\0{source}\n".encode())


def _dataset_digest(kind: str, opts: ExportOptions, view: JobView):
    return hashlib.sha256(_dataset_settings(kind, opts, view).encode())


def _record_key(kind: str) -> str:
    return f"{kind}/_export.json"  # a leading "_": not a data file to `datasets` or a shard glob


def _read_record(dest: Storage, kind: str) -> dict | None:
    try:
        record = json.loads(dest.read_bytes(_record_key(kind)))
    except (FileNotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _dataset_source(dest: Storage, kind: str) -> str | None:
    return (_read_record(dest, kind) or {}).get("source")


def _write_record(dest: Storage, kind: str, source: str, details: dict) -> None:
    # Written last: until it is there (a crash mid-way), the next export rebuilds this dataset.
    dest.write_bytes(_record_key(kind), json.dumps({"source": source, **details}, indent=1).encode())

