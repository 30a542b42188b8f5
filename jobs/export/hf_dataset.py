"""hf kind: a Hugging Face dataset of the rendered turns. Parquet shards under hf/data/<split>-NNNNNN.parquet whose
`audio` column is the `datasets` Audio storage (a struct of the file's bytes and a name), with the features in
the schema's "huggingface" metadata, so `datasets.load_dataset("parquet", data_files=...)` and
`load_dataset("<dest>/hf")` decode it at 24 kHz; and a dataset card (hf/README.md) the hub reads.

Splits are by conversation (all turns of one conversation in one split): the validation share is decided by a
hash of the conversation id, so a conversation keeps its split as the job grows. A grown job's export keeps the
shards whose conversations did not change and adds shards for the rest (shard_plan.py).
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.storage import Storage

from jobs.export.reader import SAMPLE_RATE
from jobs.export.shard_plan import ShardPlan, short
from jobs.export.shards import ShardSeries

PREFIX = "hf/"
ROW_GROUP = 100  # rows: the datasets viewer and streaming readers fetch a row group at a time

_VALUE_TYPES = [("text", pa.string(), "string"), ("speaker", pa.int32(), "int32"),
                ("conversation_id", pa.string(), "string"), ("turn_index", pa.int32(), "int32"),
                ("duration", pa.float64(), "float64"), ("num_samples", pa.int64(), "int64"),
                ("seed", pa.int64(), "int64"), ("end_reason", pa.string(), "string"),
                ("model", pa.string(), "string"), ("codes_path", pa.string(), "string"),
                ("qc_status", pa.string(), "string"), ("qc_failed", pa.string(), "string"),
                ("watermark", pa.string(), "string"), ("watermark_key", pa.string(), "string")]
FEATURES = {"audio": {"_type": "Audio", "sampling_rate": SAMPLE_RATE},
            **{name: {"_type": "Value", "dtype": dtype} for name, _, dtype in _VALUE_TYPES}}
SCHEMA = pa.schema([("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
                   + [(name, typ) for name, typ, _ in _VALUE_TYPES],
                   metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})})


SPLITS = ("train", "validation")


def split_of(conversation_id: str, validation_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(conversation_id.encode()).digest()[:8], "big") / 2 ** 64
    return "validation" if h < validation_fraction else "train"


def is_shard(key: str) -> bool:
    return key.startswith(f"{PREFIX}data/") and key.endswith(".parquet")


class SplitWriter:
    """One split's shards. Rows are buffered to ROW_GROUP before they are written (a row group per conversation
    would make thousands of row groups, each with its own footer entry), and no statistics are kept for the audio
    column: min/max of a binary column are whole values, kilobytes per row group, all held in memory until the
    footer (it was 54 MB of footer and 270 MB of memory for a 256 MB shard)."""

    def __init__(self, dest: Storage, scratch: str, split: str, max_bytes: int, first: int = 0, guard=None):
        self.series = ShardSeries(dest, scratch, lambda n: f"{PREFIX}data/{split}-{n:06d}.parquet", max_bytes, first,
                                  guard)
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[dict] = []
        self.pending_bytes = 0
        self.rows = 0
        self.audio_bytes = 0
        self.seconds = 0.0

    def add(self, rows: list[dict], source: str) -> None:
        """One conversation's rows: all in one shard."""
        size = sum(len(r["audio"]["bytes"]) for r in rows)
        if self.series.needs_roll(self.pending_bytes + size):
            self._close_shard()
        self.series.note(rows[0]["conversation_id"], short(source), rows=len(rows), bytes=size,
                         seconds=sum(r["duration"] for r in rows))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.series.open_path(), SCHEMA, compression="zstd",
                                           write_statistics=[n for n, _, _ in _VALUE_TYPES])
        self.pending += rows
        self.pending_bytes += size
        self.series.items += len(rows)
        self.rows += len(rows)
        self.audio_bytes += size
        self.seconds += sum(r["duration"] for r in rows)
        if len(self.pending) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=SCHEMA), row_group_size=ROW_GROUP)
            self.pending, self.pending_bytes = [], 0

    def _close_shard(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None
            self.series.commit()

    def finish(self) -> None:
        self._close_shard()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.series.discard()


class HfDataset:
    """The hf dataset of one export: per split, the shards a plan keeps and new ones for its other
    conversations."""

    def __init__(self, dest: Storage, scratch: str, max_bytes: int, validation_fraction: float, out_url: str,
                 plans: dict[str, ShardPlan], guard=None):
        self.dest, self.fraction, self.out_url = dest, validation_fraction, out_url.rstrip("/")
        self.plans = plans
        self.splits = {s: SplitWriter(dest, scratch, s, max_bytes, plans[s].first, guard) for s in SPLITS}

    def wants(self, conversation_id: str) -> bool:
        return conversation_id in self.plans[split_of(conversation_id, self.fraction)].todo

    def add_conversation(self, rows: list[dict], audio: list[bytes], source: str) -> None:
        if not rows:
            return
        split = split_of(rows[0]["conversation_id"], self.fraction)
        self.splits[split].add([self._row(r, a) for r, a in zip(rows, audio)], source)

    def _row(self, row: dict, audio: bytes) -> dict:
        name = f"{row['conversation_id']}/{row['turn_index']:06d}.{row['audio_path'].rsplit('.', 1)[-1]}"
        return {"audio": {"bytes": audio, "path": name}, "text": row["text"], "speaker": row["speaker"],
                "conversation_id": row["conversation_id"], "turn_index": row["turn_index"],
                "duration": row["duration_s"], "num_samples": row["num_samples"], "seed": row["seed"],
                "end_reason": row["end_reason"], "model": row["model"],
                "codes_path": f"{self.out_url}/{row['codes_path']}",  # absolute: usable away from OUT
                "qc_status": row.get("qc_status") or "unchecked", "qc_failed": row.get("qc_failed"),
                "watermark": row.get("watermark") or "off", "watermark_key": row.get("watermark_key")}

    def finish(self) -> dict:
        """Close the last shards; returns the record's splits (the card follows the record: command.py)."""
        for w in self.splits.values():
            w.finish()
        return {s: {**self._counts(s), "shards": self.plans[s].kept + self.splits[s].series.entries} for s in SPLITS}

    def abort(self) -> None:
        for w in self.splits.values():
            w.abort()

    def _counts(self, split: str) -> dict:
        """Rows, seconds and audio bytes of a split: the kept shards' and this export's."""
        w, kept = self.splits[split], self.plans[split].kept
        return {"rows": w.rows + sum(e.get("rows", 0) for e in kept),
                "seconds": w.seconds + sum(e.get("seconds", 0.0) for e in kept),
                "bytes": w.audio_bytes + sum(e.get("bytes", 0) for e in kept)}


KNOWN_LICENSES = {"sesame/csm-1b": "apache-2.0"}  # the model card's license field


def license_for(model: str) -> str:
    if model.startswith("random:"):
        return KNOWN_LICENSES["sesame/csm-1b"]  # random weights of that architecture: its terms, to be safe
    return KNOWN_LICENSES.get(model, "other")  # unknown: "other", and --license to say which


def dataset_card(counts: dict, fingerprint: dict, license_id: str, conversations: int, qc: dict | None = None) -> str:
    """README.md: the YAML header the hub reads (license, features, splits, configs), then how it was made."""
    import yaml

    splits = [s for s in ("train", "validation") if counts[s]["rows"]]
    header = {
        "license": license_id,
        "task_categories": ["text-to-speech"],
        "pretty_name": "csm-render synthetic dialogue",
        "dataset_info": {
            "features": [{"name": "audio", "dtype": {"audio": {"sampling_rate": SAMPLE_RATE}}}]
                        + [{"name": n, "dtype": d} for n, _, d in _VALUE_TYPES],
            "splits": [{"name": s, "num_bytes": counts[s]["bytes"], "num_examples": counts[s]["rows"]}
                       for s in splits],
        },
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}],
    }
    rows = sum(counts[s]["rows"] for s in splits)
    hours = sum(counts[s]["seconds"] for s in splits) / 3600
    d = fingerprint.get("defaults", {})
    body = (
        "# Synthetic dialogue rendered with CSM-1B\n\n"
        f"{rows} turns of {conversations} conversations, {hours:.3f} hours of 24 kHz mono speech, rendered by "
        "csm-render with Sesame's CSM-1B.\n\n"
        "## How it was made\n\n"
        f"- model: `{fingerprint.get('model')}`, revision `{fingerprint.get('revision')}`\n"
        f"- sampling defaults (rows may set their own; each row's seed is in `seed`): temperature "
        f"{d.get('temperature')}, top_k {d.get('top_k')}, max_audio_length_ms {d.get('max_audio_length_ms')}, "
        f"job seed {d.get('seed')}\n"
        f"- csm-render {fingerprint.get('version')}; audio stored as {fingerprint.get('audio_format')}\n"
        + "".join(f"- {s}: {counts[s]['rows']} turns, {counts[s]['seconds'] / 3600:.3f} h\n" for s in splits)
        + "\n" + SYNTHETIC_NOTE + "\n" + quality_note(qc)
        + "\nEach row is one rendered turn; `codes_path` locates its Mimi codes (int16 [32, frames], numpy).\n"
        "Given voice-prompt turns are not included. Load with `datasets.load_dataset(\"<this folder>\")`.\n")
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body


SYNTHETIC_NOTE = (
    "## Synthetic speech\n\nEvery clip in this dataset is synthetic: AI-generated speech, not a recording of a "
    "person. Unless a row's `watermark` says `off` (the job opted out) or `silent`, its audio carries silentcipher's "
    "inaudible watermark, as Sesame's reference generator marks CSM's output (`watermark_key`: the key, hex; "
    "`csm-render verify FILE` reads it back). Do not present this audio as real speech.\n")


def quality_note(qc: dict | None) -> str:
    """The card's word on csm-render's quality checks: which turns the dataset holds."""
    if qc is None:  # a record from before the checks: nothing was left out
        return ""
    failed = qc.get("failed_turns", 0)
    if qc.get("include_failed"):
        return (f"## Quality\n\nEvery rendered turn is included. {failed} failed csm-render's quality checks "
                "(`qc_status` `fail`, `qc_failed` names the checks): filter on `qc_status` before training.\n")
    return ("## Quality\n\nOnly turns that passed csm-render's quality checks are included (`qc_status` `pass`, or "
            f"`unchecked` for turns rendered before the checks existed): {failed} turn(s) that failed were left out. "
            "The checks look at the audio alone (length limit reached, silence, speech rate against the text, "
            "clipping); a passing turn can still mispronounce or misread its text.\n")
