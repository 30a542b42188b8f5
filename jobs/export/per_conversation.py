"""The per-conversation kinds: one finished audio file (conversations/) and its captions (captions/).

Each conversation's files are written first and a small JSON record last (conversations/<id>.json, the timeline
captions/<id>.json): the record names the source it was made from (the metadata file's hash and the settings), so
a re-run skips a conversation whose record matches, and one whose files were cut short by a crash has no record
yet and is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from jobs.storage import Storage

from jobs.export import captions
from jobs.disclosure import audio_tags, disclosure, episode_watermark, models_of
from jobs.export.encode import extension, write_audio
from jobs.export.loudness import normalize
from jobs.export.options import ExportOptions
from jobs.export.reader import SAMPLE_RATE, Conversation, JobView
from jobs.export.stitch import stitch
from jobs.export.timeline import place, total_samples

_SETTINGS = {"conversations": ("audio_format", "pause_ms", "fade_ms", "include_given", "loudness_lufs",
                               "true_peak_db"),
             "captions": ("pause_ms", "include_given")}


def source_id(kind: str, conv: Conversation, opts: ExportOptions) -> str:
    given = [(t.turn_index, t.given_audio, t.num_samples, t.pause_ms) for t in conv.given]
    parts = [conv.source, opts.settings_hash(*_SETTINGS[kind]), json.dumps(given)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def record_key(kind: str, conversation_id: str) -> str:
    return f"{kind}/{conversation_id}.json"


def up_to_date(dest: Storage, kind: str, conv: Conversation, opts: ExportOptions) -> bool:
    try:
        record = json.loads(dest.read_bytes(record_key(kind, conv.conversation_id)))
    except (FileNotFoundError, ValueError):
        return False
    return record.get("source") == source_id(kind, conv, opts)


def export_captions(view: JobView, dest: Storage, conv: Conversation, opts: ExportOptions) -> None:
    cid = conv.conversation_id
    placements = place(view.turns(conv), opts.pause_ms)
    dest.write_bytes(f"captions/{cid}.srt", captions.srt(placements).encode())
    dest.write_bytes(f"captions/{cid}.vtt", captions.webvtt(placements).encode())
    record = captions.timeline(cid, placements, source_id("captions", conv, opts))
    dest.write_bytes(record_key("captions", cid), captions.timeline_bytes(record))


def export_audio(view: JobView, dest: Storage, conv: Conversation, opts: ExportOptions, scratch: str) -> dict:
    """Stitch, normalize if asked, encode to a local scratch file, upload it whole; then the record."""
    cid = conv.conversation_id
    placements = place(view.turns(conv), opts.pause_ms)
    samples = stitch(placements, view.pcm, opts.fade_ms)
    loudness = None
    if opts.loudness_lufs is not None:
        samples, result = normalize(samples, opts.loudness_lufs, opts.true_peak_db)
        loudness = result.as_dict()
    ext = extension(opts.audio_format)
    watermark = episode_watermark(conv.rows)
    fd, path = tempfile.mkstemp(suffix=ext, dir=scratch)
    os.close(fd)
    try:
        write_audio(path, samples, opts.audio_format, audio_tags(cid, models_of(conv.rows), watermark))
        dest.upload_file(f"conversations/{cid}{ext}", path)
    finally:
        os.unlink(path)
    record = {"conversation_id": cid, "source": source_id("conversations", conv, opts), "file": f"{cid}{ext}",
              "format": opts.audio_format, "sample_rate": SAMPLE_RATE, "num_samples": total_samples(placements),
              "duration_s": total_samples(placements) / SAMPLE_RATE, "turns": len(placements),
              "given_turns": sum(p.turn.given for p in placements), "pause_ms_default": opts.pause_ms,
              "fade_ms": opts.fade_ms, "loudness": loudness,
              "synthetic": True, "disclosure": disclosure(models_of(conv.rows), watermark), **watermark,
              # An episode keeps every turn; these failed the quality checks (listen to them first).
              "qc_flagged": [{"turn_index": r["turn_index"], "qc_failed": r.get("qc_failed")} for r in conv.rows
                             if r.get("qc_status") == "fail"]}
    dest.write_bytes(record_key("conversations", cid), json.dumps(record, indent=1).encode())
    return record
