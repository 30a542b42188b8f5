"""A job's OUT as export sees it: which conversations are complete, one conversation at a time, each turn's audio.

A conversation is complete when its metadata file exists and it has no failure record: the worker writes the
metadata only when the conversation ends, a failed one gets its failure record first, and the record is removed
only after a whole metadata file (jobs/cluster/worker.py), so this holds at any moment of a running job. Nothing
here writes to OUT.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from jobs.storage import Storage, layout
from jobs.storage.jobrecord import read_job_record

from jobs.export.options import ExportRequestError

SAMPLE_RATE = 24_000


class ExportError(Exception):
    """One conversation could not be exported (unreadable or inconsistent files); the others go on."""

    def __init__(self, message: str, conversation_id: str = ""):
        super().__init__(message)
        self.conversation_id = conversation_id


@dataclass
class Turn:
    """One turn as it lands in a stitched conversation."""
    turn_index: int
    speaker: int
    text: str
    num_samples: int
    pause_ms: int | None
    given: bool = False
    row: dict | None = None  # the metadata row of a rendered turn
    given_audio: str | None = None  # where a given turn's recording is (from the manifest)


@dataclass
class Conversation:
    conversation_id: str
    rows: list[dict]  # metadata rows, by turn_index
    source: str  # sha256 of the metadata file: a conversation re-rendered has a new one
    given: list[Turn] = field(default_factory=list)


@dataclass
class Scan:
    complete: list[str]  # sorted
    failed: dict[str, str]  # conversation_id -> why
    in_progress: list[str]  # committed turns, no metadata yet


class JobView:
    def __init__(self, storage: Storage):
        record = read_job_record(storage)
        if record is None:
            raise ExportRequestError(f"{storage.url} is not a job's output (no {layout.JOB_RECORD}): give the --out "
                                     "folder of a `csm-render run`")
        self.storage, self.record = storage, record
        self.fingerprint = record.get("fingerprint", {})

    def scan(self) -> Scan:
        """One listing each of metadata/, failures/ and commits/ (streamed; only conversation ids are kept)."""
        finished = {k[len("metadata/"):-len(".parquet")] for k in self.storage.iter_list("metadata/")
                    if k.endswith(".parquet") and k.count("/") == 1}
        failed = {}
        for key in self.storage.list("failures/"):
            try:
                record = json.loads(self.storage.read_bytes(key))
                failed[record["conversation_id"]] = f"{record['error_type']}: {record['message']}"
            except FileNotFoundError:  # cleared by a later success just now
                continue
        started = set()
        for key in self.storage.iter_list("commits/"):
            parsed = layout.parse_commit_key(key)
            if parsed and parsed[0] not in finished and parsed[0] not in failed:
                started.add(parsed[0])
        return Scan(sorted(finished - failed.keys()), failed, sorted(started))

    def conversation(self, conversation_id: str) -> Conversation:
        key = layout.metadata_key(conversation_id)
        data = self.storage.read_bytes(key)
        try:
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as e:
            raise ExportError(f"{self.storage.url}/{key}: unreadable metadata ({e}); re-run the job to rewrite "
                              "it", conversation_id) from None
        rows.sort(key=lambda r: r["turn_index"])
        return Conversation(conversation_id, rows, hashlib.sha256(data).hexdigest())

    def audio_bytes(self, row: dict) -> bytes:
        return self.storage.read_bytes(row["audio_path"])

    def audio_pcm(self, row: dict, data: bytes | None = None) -> np.ndarray:
        """A rendered turn's samples as int16, exactly as stored; checked against its metadata row."""
        where = f"{self.storage.url}/{row['audio_path']}"
        data = self.audio_bytes(row) if data is None else data
        if row["num_samples"] == 0:
            return np.zeros(0, np.int16)
        try:
            pcm, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=False)
        except Exception as e:
            raise ExportError(f"{where} (turn {row['turn_index']} of {row['conversation_id']}): cannot decode "
                              f"({e}); delete its commit record and re-run the job to render it again",
                              row["conversation_id"]) from None
        if rate != SAMPLE_RATE or len(pcm) != row["num_samples"]:
            raise ExportError(f"{where}: {len(pcm)} samples at {rate} Hz, its metadata says {row['num_samples']} "
                              f"at {SAMPLE_RATE}: the file was changed after the job wrote it", row["conversation_id"])
        return pcm

    def turns(self, conv: Conversation) -> list[Turn]:
        rendered = [Turn(r["turn_index"], r["speaker"], r["text"], r["num_samples"], r["pause_ms"], row=r)
                    for r in conv.rows]
        return sorted(rendered + conv.given, key=lambda t: t.turn_index)

    def pcm(self, turn: Turn) -> np.ndarray:
        return given_pcm(turn) if turn.given else self.audio_pcm(turn.row)


def given_pcm(turn: Turn) -> np.ndarray:
    """A given turn's recording as 24 kHz mono int16: decoded and resampled as the worker did for the model."""
    from csm_worker.audio import load_audio  # audio I/O only, the same decoding the render used

    audio = turn.given_audio
    if audio.startswith("s3://"):
        from jobs.storage.s3 import read_uri_bytes

        samples = load_audio(read_uri_bytes(audio), name=audio)
    else:
        samples = load_audio(audio)
    # libsndfile's scale (32768) undoes its own int16 -> float decoding: a 24 kHz 16-bit recording comes back exact.
    return np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)


def iter_conversations(view: JobView, ids: list[str], given: dict[str, list[Turn]] | None = None
                       ) -> Iterator[Conversation | ExportError]:
    """Each complete conversation read in turn (one in memory at a time); an unreadable one as its error."""
    for cid in ids:
        try:
            conv = view.conversation(cid)
        except FileNotFoundError:
            continue  # removed since the listing (a --new-run started): nothing to export
        except ExportError as e:
            yield e
            continue
        conv.given = list((given or {}).get(cid, ()))
        yield conv
