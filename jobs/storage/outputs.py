"""Writing a job's outputs: per-turn audio, codes and commit record; per-conversation metadata; failures.

Order matters: a turn's audio and codes are written first and its commit record last, so a turn is committed
exactly when its record exists; a crash before that leaves only objects that the re-run overwrites.
"""

from __future__ import annotations

import io
import json
from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Set

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from csm_worker.audio import audio_extension, audio_sha256, encode_audio
from csm_worker.engine.requests import RenderedTurn
from csm_worker.quality.checks import TurnQuality

from jobs.disclosure import audio_tags
from jobs.storage import layout
from jobs.storage import ObjectExists, Storage

METADATA_SCHEMA = pa.schema([
    ("conversation_id", pa.string()),
    ("turn_index", pa.int32()),
    ("speaker", pa.int32()),
    ("text", pa.string()),
    ("audio_path", pa.string()),
    ("codes_path", pa.string()),
    ("sample_rate", pa.int32()),
    ("num_samples", pa.int64()),
    ("duration_s", pa.float64()),
    ("num_frames", pa.int32()),
    ("end_reason", pa.string()),
    ("seed", pa.int64()),
    ("temperature", pa.float64()),
    ("top_k", pa.int32()),
    ("pause_ms", pa.int32()),
    ("model", pa.string()),
    ("sha256", pa.string()),
    ("rendered_at", pa.string()),
    ("voice_name", pa.string()),  # the cast voice (--voices) the turn was conditioned on; null without one
    ("voice_hash", pa.string()),
    # The always-on checks (csm_worker/quality) of the attempt kept: "pass", "fail" or "unchecked"; the failed
    # checks, comma-separated; which attempt was kept (attempt n > 1 sampled with csm_worker.engine.retries
    # .attempt_seed(seed, n)) and how many were rendered.
    ("qc_status", pa.string()),
    ("qc_failed", pa.string()),
    ("qc_attempt", pa.int32()),
    ("qc_attempts", pa.int32()),
    # The ASR check (--qc-asr), null when it did not run: character and word error rates of the transcript
    # against the text (both normalized), and the transcript as the recognizer wrote it.
    ("qc_cer", pa.float64()),
    ("qc_wer", pa.float64()),
    ("qc_transcript", pa.string()),
    # The synthetic-speech watermark (csm_worker/watermark): "on" (the audio, and so its sha256, is marked),
    # "off" (the job opted out: --watermark off) or "silent" (no sound to carry a mark); the key (hex) and where
    # the weights came from, when marked.
    ("watermark", pa.string()),
    ("watermark_key", pa.string()),
    ("watermark_weights", pa.string()),
    # Which render pass committed the turn: 1, the job's first render; n > 1, `run --rerender-failed`'s pass n
    # (jobs/plan/passes.py: it rendered the conversation's failed turn and those after it again).
    ("render_pass", pa.int32()),
])


class OutputWriter:
    def __init__(self, storage: Storage, audio_format: str = "wav", model: str = "", watermark: dict | None = None,
                 rerender=None):
        self.storage = storage
        self.rerender = rerender  # the open re-render pass (jobs.plan.passes.RenderPass), if any
        self.watermark = watermark or {"watermark": "off"}  # jobs.watermark_options.WatermarkOptions.record()
        self.audio_format = audio_format
        self.ext = audio_extension(audio_format)
        self.model = model

    def commit_turn(self, turn: RenderedTurn, temperature: float, top_k: int, pause_ms: int | None,
                    voice: tuple[str | None, str | None] = (None, None)) -> dict:
        """Write audio, codes, then the commit record; returns the metadata row. `voice`: (name, hash) of the
        cast voice the turn was conditioned on. The turn's checks are its `quality` (None: unchecked), of the
        attempt `attempt` of the `attempts` the engine rendered."""
        cid, idx = turn.conversation_id, turn.turn_index
        render_pass = self.rerender.pass_of(cid, idx) if self.rerender else 1
        commit_key = layout.commit_key(cid, idx, render_pass)
        if self.storage.exists(commit_key):
            # Only a worker that outlived its lease gets here (its node cut off, its run taken over): the turn is
            # someone else's now, and its files must keep matching the record's sha256 and the next turn's context.
            # This narrows the window, not closes it: two workers that both pass this check before either commits
            # still both write the files (only one record wins); fencing by lease generation would close it.
            raise ObjectExists(f"turn {idx} of {cid} is already committed (by another worker or run); "
                               "its files were left as they are")
        # A turn the model ended at once has no samples; libsndfile cannot write (or read) an empty FLAC, so such
        # a turn is stored as an empty WAV whatever the job's format.
        fmt, ext = (self.audio_format, self.ext) if len(turn.audio) else ("wav", ".wav")
        watermark = self._watermark_columns(turn)
        tags = audio_tags(f"{cid} turn {idx}", self.model, watermark)  # the file says it is synthetic
        data = encode_audio(turn.audio, fmt, turn.sample_rate, tags)
        audio_path = layout.audio_key(cid, idx, ext, render_pass)
        codes_path = layout.codes_key(cid, idx, render_pass)
        self.storage.write_bytes(audio_path, data)
        self.storage.write_bytes(codes_path, codes_to_bytes(turn.codes))
        row = {
            "conversation_id": cid, "turn_index": idx, "speaker": turn.speaker, "text": turn.text,
            "audio_path": audio_path, "codes_path": codes_path, "sample_rate": turn.sample_rate,
            "num_samples": int(len(turn.audio)), "duration_s": len(turn.audio) / turn.sample_rate,
            "num_frames": turn.num_frames, "end_reason": turn.end_reason, "seed": int(turn.seed),
            "temperature": float(temperature), "top_k": int(top_k), "pause_ms": pause_ms, "model": self.model,
            "sha256": audio_sha256(data), "rendered_at": layout.timestamp(),
            "voice_name": voice[0], "voice_hash": voice[1], **qc_columns(turn.quality, turn.attempt, turn.attempts),
            **watermark, "render_pass": render_pass,
        }
        # Create-only (a hard link locally, If-None-Match on S3): a commit record is never replaced, and a retry
        # that finds our own record (its first response was lost) counts as done.
        self.storage.write_new(commit_key, json.dumps(row, sort_keys=True).encode())
        return row

    def _watermark_columns(self, turn: RenderedTurn) -> dict:
        if turn.watermark == "on":
            return {"watermark_key": None, "watermark_weights": None, **self.watermark}
        return {"watermark": turn.watermark or "off", "watermark_key": None, "watermark_weights": None}

    def read_commit(self, conversation_id: str, turn_index: int, render_pass: int = 1) -> dict:
        return json.loads(self.storage.read_bytes(layout.commit_key(conversation_id, turn_index, render_pass)))

    def committed(self, conversation_id: str) -> set[int]:
        """The conversation's committed turn indices, listed now (in the open re-render pass, if any)."""
        return committed_turns(self.storage, conversation_id, self.rerender).get(conversation_id, set())

    def latest_passes(self, conversation_id: str) -> dict[int, int]:
        """Each committed turn's current record: the latest pass that committed it (of those standing in the open
        pass), listed now. Pass 1 for every turn of a job never re-rendered."""
        latest: dict[int, int] = {}
        for key in self.storage.iter_list(f"commits/{conversation_id}/"):
            parsed = layout.parse_commit(key)
            if parsed and (self.rerender is None or self.rerender.counts(parsed)):
                latest[parsed.turn_index] = max(latest.get(parsed.turn_index, 1), parsed.render_pass)
        return latest

    def load_codes(self, conversation_id: str, turn_index: int, render_pass: int = 1) -> np.ndarray:
        return codes_from_bytes(self.storage.read_bytes(layout.codes_key(conversation_id, turn_index, render_pass)))

    def write_metadata(self, conversation_id: str, rows: list[dict]) -> None:
        """The conversation's rows, one per committed turn, replacing any earlier file whole."""
        rows = sorted(rows, key=lambda r: r["turn_index"])
        table = pa.Table.from_pylist(rows, schema=METADATA_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.storage.write_bytes(layout.metadata_key(conversation_id), buf.getvalue())

    def write_metadata_from_commits(self, conversation_id: str, turns: set[int]) -> None:
        """The conversation's rows read back from the current commit records of `turns` (its committed turns)."""
        latest = self.latest_passes(conversation_id)
        self.write_metadata(conversation_id, [self.read_commit(conversation_id, i, latest.get(i, 1))
                                              for i in sorted(turns)])

    def write_failure(self, conversation_id: str, error_type: str, message: str, attempts: int,
                      turns_committed: int) -> None:
        record = {"conversation_id": conversation_id, "error_type": error_type, "message": message,
                  "attempts": attempts, "turns_committed": turns_committed,
                  "failed_at": layout.timestamp()}
        self.storage.write_bytes(layout.failure_key(conversation_id), json.dumps(record, sort_keys=True).encode())

    def clear_failure(self, conversation_id: str) -> None:
        self.storage.delete(layout.failure_key(conversation_id))


def qc_columns(quality: TurnQuality | None, attempt: int, attempts: int) -> dict:
    counts = {"qc_attempt": attempt, "qc_attempts": attempts}
    return {**qc_result(quality), **counts}


def qc_result(quality: TurnQuality | None) -> dict:
    """The columns a turn's checks fill (all but the attempt counts, which say how it was rendered)."""
    if quality is None:
        return {"qc_status": "unchecked", "qc_failed": None, "qc_cer": None, "qc_wer": None, "qc_transcript": None}
    m = quality.measures
    return {"qc_status": "pass" if quality.passed else "fail", "qc_failed": ",".join(quality.failed) or None,
            "qc_cer": m.get("cer"), "qc_wer": m.get("wer"), "qc_transcript": m.get("transcript")}


def committed_turns(storage: Storage, conversation_id: str | None = None, rerender=None) -> dict[str, TurnSet]:
    """Committed turn indices by conversation, from one listing of commits/ (of one conversation's folder only,
    when given), streamed: a resumed job of millions of turns holds neither the listing nor a Python set per
    conversation (see TurnSet), only a few bytes per committed turn. A turn counts once, whatever the passes that
    committed it; in an open re-render pass (`rerender`, jobs.plan.passes.RenderPass) a turn it covers counts only
    once that pass committed it."""
    done: dict[str, array] = defaultdict(lambda: array("q"))
    for key in storage.iter_list(f"commits/{conversation_id}/" if conversation_id else "commits/"):
        parsed = layout.parse_commit(key)
        if parsed and (rerender is None or rerender.counts(parsed)):
            done[parsed.conversation_id].append(parsed.turn_index)
    return {cid: TurnSet(turns) for cid, turns in done.items()}


class TurnSet(Set):
    """A conversation's committed turn indices: an immutable set held as a sorted array of int64, 8 bytes a turn
    (a Python set of ints takes about 60). Compares equal to the plain set of the same indices."""

    __slots__ = ("_turns",)

    def __init__(self, turns: Iterable[int] = ()):
        self._turns = array("q", sorted(set(turns)))

    def __contains__(self, turn: object) -> bool:
        if not isinstance(turn, int):
            return False
        i = bisect_left(self._turns, turn)
        return i < len(self._turns) and self._turns[i] == turn

    def __iter__(self) -> Iterator[int]:
        return iter(self._turns)

    def __len__(self) -> int:
        return len(self._turns)

    def __repr__(self) -> str:
        return f"TurnSet({list(self._turns)})"


def codes_to_bytes(codes: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(codes, dtype=np.int16), allow_pickle=False)  # codes < 2051 fit in int16
    return buf.getvalue()


def codes_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False).astype(np.int64)
