"""A streaming planner: a manifest's work in plan order, one chunk of conversations at a time.

jobs.plan.order.plan orders conversations that are all in memory as Python objects, a few hundred bytes per turn: too
much for the job driver when a manifest holds millions of turns. This module reaches the same order from small
per-conversation sums, and spills the turns to a scratch folder so that only one chunk of conversations is ever
built as ConversationSpecs (an external bucket sort):

- pass 1 reads conversation_id, turn_index, text and audio by record batches and sums, per conversation, the
  turns left to render and their text length (WorkItem.expected_cost). Sorting those sums the way plan() sorts
  work items gives the plan order, which is cut into chunks of `chunk_conversations` conversations;
- pass 2 reads the manifest again and sends every row of a conversation with work left to its chunk. Rows are
  buffered up to `buffer_bytes`, then written as one run: an Arrow IPC file holding, sorted by chunk, one record
  batch per chunk found in the buffer. A chunk is the union of its batches over all runs; the IPC footer lets a
  reader fetch one batch without reading the rest of the file.

Runs, rather than one file per chunk, keep the number of files and open files independent of the number of chunks:
rows of one conversation spread over every file of a manifest (shuffled rows) cost no more than grouped rows.

Layout of the spool folder:
    complete.arrow      ids of the conversations with nothing left to render, sorted (for metadata repair)
    run-00000.arrow     rows of conversations with work left, in SPOOL_SCHEMA, one record batch per chunk
    run-00001.arrow     ...
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.manifests.manifest import BATCH_ROWS, ConversationSpec, TurnSpec
from jobs.manifests.audio import resolve_audio
from jobs.manifests.columns import COLUMNS, plain
from jobs.plan.order import WorkItem

BUFFER_BYTES = 32 * 2**20   # rows held before a run is written; pass 2 peaks at about twice this
MAX_OPEN_RUNS = 256         # run files chunks() keeps open at once, well under the usual limit of 1024 files
_MERGE_ROWS = 1_000_000     # partial per-conversation sums held before they are merged

# The spool's columns: TurnSpec's fields, typed as TurnSpec holds them (any integer width becomes int64; an
# integer temperature becomes a float, as manifest._turn makes it). Validated values fit these types.
_TYPES = {"conversation_id": pa.string(), "text": pa.string(), "audio": pa.string(), "temperature": pa.float64()}
SPOOL_SCHEMA = pa.schema([pa.field(c.name, _TYPES.get(c.name, pa.int64())) for c in COLUMNS])
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")  # cheap; rows of text shrink about threefold
_COMPLETE = "complete.arrow"


@dataclass
class _Run:
    path: str
    batch_of_chunk: np.ndarray   # chunk number -> index of its record batch in the file, -1 when it has none


@dataclass
class Spool:
    """The planned work of a manifest, spilled to `folder`; see build_spool."""
    folder: str
    conversations: int           # all conversations in the manifests
    already_complete: int        # conversations with nothing left to render
    turns_to_render: int         # turns left to render, over all conversations
    num_chunks: int
    chunk_conversations: int
    _runs: list[_Run] = field(repr=False)
    _committed: dict[str, set[int]] = field(repr=False)

    @property
    def work_conversations(self) -> int:
        return self.conversations - self.already_complete

    def complete_ids(self) -> Iterator[str]:
        """Ids of the conversations with nothing left to render, sorted, read from the folder as they go."""
        with pa.OSFile(os.path.join(self.folder, _COMPLETE), "rb") as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                yield from reader.get_batch(i).column(0).to_pylist()

    def chunks(self) -> Iterator[list[WorkItem]]:
        """Work items in plan order, one chunk (at most chunk_conversations items) at a time; only the chunk being
        yielded is held in memory. Can be iterated more than once."""
        runs = _RunReaders()
        try:
            for chunk in range(self.num_chunks):
                yield self._work_items(self._read_chunk(chunk, runs))
        finally:
            runs.close()

    def _read_chunk(self, chunk: int, runs: _RunReaders) -> pa.Table:
        batches = [runs.get(run.path, int(run.batch_of_chunk[chunk]))
                   for run in self._runs if run.batch_of_chunk[chunk] >= 0]
        return pa.Table.from_batches(batches, SPOOL_SCHEMA)

    def _work_items(self, rows: pa.Table) -> list[WorkItem]:
        rows = rows.sort_by([("conversation_id", "ascending"), ("turn_index", "ascending")])
        items: list[WorkItem] = []
        for row in rows.to_pylist():
            cid = row["conversation_id"]
            if not items or items[-1].conversation_id != cid:
                items.append(WorkItem(ConversationSpec(cid, []), set(self._committed.get(cid, ()))))
            items[-1].spec.turns.append(TurnSpec(**row))
        items.sort(key=lambda w: (-w.expected_cost, w.conversation_id))  # plan()'s order, from the same property
        return items


def build_spool(files: list[str], committed: dict[str, set[int]], folder: str, *, chunk_conversations: int = 256,
                audio_name: Callable[[str], str] = lambda p: p, buffer_bytes: int = BUFFER_BYTES) -> Spool:
    """Plan the work of validated manifest `files` into `folder` (created if missing; the caller removes it).

    `committed`: turn indices already committed per conversation_id; kept by reference and read again as chunks
    are built. `audio_name` maps each given turn's resolved audio path (as jobs.manifests.manifest resolves it, against the
    folder of the file the row is in) to the name the workers will read, e.g. Localized.name.
    Iterating the result's chunks() gives the items jobs.plan.order.plan(load_conversations(files), committed) would.
    """
    if chunk_conversations < 1:
        raise ValueError(f"chunk_conversations must be at least 1, not {chunk_conversations}")
    os.makedirs(folder, exist_ok=True)
    totals = conversation_totals(files, committed)
    done = pc.equal(totals["left"], 0)
    _write_ids(os.path.join(folder, _COMPLETE), totals.filter(done)["conversation_id"].sort())
    work = _plan_order(totals.filter(pc.invert(done)))
    # The one per-conversation Python structure: the chunk of each conversation with work left, for pass 2.
    chunk_of = {cid: i // chunk_conversations for i, cid in enumerate(work.to_pylist())}
    num_chunks = -(-len(work) // chunk_conversations)
    writer = _RunWriter(folder, num_chunks, buffer_bytes)
    for path in files:
        for batch in _batches(path, SPOOL_SCHEMA.names):
            chunks = _map_distinct(_ids(batch), chunk_of.get, pa.int32())
            keep = pc.is_valid(chunks)
            if pc.any(keep).as_py():
                writer.add(_spool_batch(batch.filter(keep), path, audio_name), chunks.filter(keep).to_numpy())
    writer.flush()
    return Spool(folder, totals.num_rows, totals.num_rows - len(work), pc.sum(totals["left"]).as_py() or 0,
                 num_chunks, chunk_conversations, writer.runs, committed)


# --- pass 1: per-conversation sums ------------------------------------------------------------------------------

_TOTALS_SCHEMA = pa.schema([("conversation_id", pa.string()), ("left", pa.int64()), ("cost", pa.int64())])


def conversation_totals(files: list[str], committed: dict[str, set[int]]) -> pa.Table:
    """One row per conversation: turns left to render, and their total text length in characters."""
    columns = ["conversation_id", "text", "audio"] + (["turn_index"] if committed else [])
    totals = _Totals()
    for path in files:
        for batch in _batches(path, columns):
            ids = _ids(batch)
            left = _left_to_render(batch, ids, committed)
            lengths = pc.utf8_length(plain(batch.column("text"))).to_numpy().astype(np.int64)  # len() counts too
            totals.add(_sum_by_conversation(pa.table({"conversation_id": ids, "left": left.astype(np.int64),
                                                      "cost": np.where(left, lengths, 0)})))
    return totals.result()


def _left_to_render(batch: pa.RecordBatch, ids: pa.Array, committed: dict[str, set[int]]) -> np.ndarray:
    """Rows that are neither given (audio set) nor committed: WorkItem.remaining, per row."""
    if "audio" in batch.schema.names:
        left = np.array(pc.is_null(batch.column("audio")).to_numpy(zero_copy_only=False), dtype=bool)
    else:
        left = np.ones(batch.num_rows, dtype=bool)
    if committed:
        has_commits = _map_distinct(ids, lambda cid: cid in committed, pa.bool_()).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(left & has_commits)
        if len(rows):
            pairs = zip(ids.take(rows).to_pylist(), batch.column("turn_index").take(rows).to_pylist())
            done = np.fromiter((turn in committed[cid] for cid, turn in pairs), dtype=bool, count=len(rows))
            left[rows[done]] = False
    return left


def _sum_by_conversation(table: pa.Table) -> pa.Table:
    summed = table.group_by("conversation_id").aggregate([("left", "sum"), ("cost", "sum")])
    return summed.select(["conversation_id", "left_sum", "cost_sum"]).rename_columns(_TOTALS_SCHEMA.names)


class _Totals:
    """Per-conversation sums over many batches. A batch's sums are kept until the kept sums outgrow the merged
    table, then merged into it: memory stays within a few rows per conversation, and merging costs O(rows) in all."""

    def __init__(self) -> None:
        self.merged = _TOTALS_SCHEMA.empty_table()
        self.parts: list[pa.Table] = []
        self.part_rows = 0

    def add(self, part: pa.Table) -> None:
        self.parts.append(part)
        self.part_rows += part.num_rows
        if self.part_rows > max(_MERGE_ROWS, self.merged.num_rows):
            self._merge()

    def result(self) -> pa.Table:
        self._merge()
        return self.merged

    def _merge(self) -> None:
        if self.parts:
            self.merged = _sum_by_conversation(pa.concat_tables([self.merged, *self.parts]))
            self.parts, self.part_rows = [], 0


def _plan_order(work: pa.Table) -> pa.Array:
    """Ids of the conversations with work left, in plan()'s order: cost descending, then id ascending (Arrow
    compares strings bytewise: for UTF-8 that is Python's code point order)."""
    order = pc.sort_indices(work, sort_keys=[("cost", "descending"), ("conversation_id", "ascending")])
    return work["conversation_id"].take(order).combine_chunks()


# --- pass 2: rows to runs -----------------------------------------------------------------------------------------

def _spool_batch(batch: pa.RecordBatch, path: str, audio_name: Callable[[str], str]) -> pa.RecordBatch:
    """The rows in SPOOL_SCHEMA: audio resolved as manifest._turn resolves it, then named by audio_name (the run
    files live elsewhere, so a relative path would lose its folder); optional columns missing from the file null."""
    def audio(value: str | None) -> str | None:
        return None if value is None else audio_name(resolve_audio(value, path))

    columns = []
    for spooled in SPOOL_SCHEMA:
        if spooled.name not in batch.schema.names:
            columns.append(pa.nulls(batch.num_rows, spooled.type))
            continue
        values = plain(batch.column(spooled.name))
        if spooled.name == "audio":
            values = _map_distinct(values, audio, pa.string())
        columns.append(values.cast(spooled.type))
    return pa.RecordBatch.from_arrays(columns, schema=SPOOL_SCHEMA)


class _RunWriter:
    """Buffers spooled rows with their chunk numbers and writes them out as runs (see the module docstring)."""

    def __init__(self, folder: str, num_chunks: int, buffer_bytes: int) -> None:
        self.folder = folder
        self.num_chunks = num_chunks
        self.buffer_bytes = buffer_bytes
        self.runs: list[_Run] = []
        self.batches: list[pa.RecordBatch] = []
        self.chunks: list[np.ndarray] = []
        self.size = 0

    def add(self, batch: pa.RecordBatch, chunks: np.ndarray) -> None:
        self.batches.append(batch)
        self.chunks.append(chunks)
        self.size += batch.nbytes
        if self.size >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.batches:
            return
        rows, chunks = self._sorted_by_chunk()
        starts = np.flatnonzero(np.r_[True, chunks[1:] != chunks[:-1]])
        stops = np.r_[starts[1:], len(chunks)]
        batch_of_chunk = np.full(self.num_chunks, -1, dtype=np.int32)
        path = os.path.join(self.folder, f"run-{len(self.runs):05d}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, SPOOL_SCHEMA, options=_IPC_OPTIONS) as out:
            for i, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist())):
                out.write_batch(rows.slice(start, stop - start))
                batch_of_chunk[chunks[start]] = i
        self.runs.append(_Run(path, batch_of_chunk))

    def _sorted_by_chunk(self) -> tuple[pa.RecordBatch, np.ndarray]:
        """The buffered rows as one batch sorted by chunk, and their chunk numbers; empties the buffer first, so
        the buffer and its sorted copy are the only two copies alive."""
        table = pa.Table.from_batches(self.batches, SPOOL_SCHEMA)
        chunks = np.concatenate(self.chunks)
        self.batches, self.chunks, self.size = [], [], 0
        order = np.argsort(chunks, kind="stable")
        taken = table.take(pa.array(order))
        del table
        rows = pa.RecordBatch.from_arrays([c.combine_chunks() for c in taken.columns], schema=SPOOL_SCHEMA)
        return rows, chunks[order]


class _RunReaders:
    """Open run files for chunks(), the least recently used closed beyond MAX_OPEN_RUNS. Opening reads a run's
    footer once; each chunk then reads only its own batch from each run."""

    def __init__(self) -> None:
        self.open: OrderedDict[str, tuple[pa.OSFile, pa.ipc.RecordBatchFileReader]] = OrderedDict()

    def get(self, path: str, index: int) -> pa.RecordBatch:
        if path in self.open:
            self.open.move_to_end(path)
        else:
            if len(self.open) >= MAX_OPEN_RUNS:
                self.open.popitem(last=False)[1][0].close()
            source = pa.OSFile(path, "rb")
            self.open[path] = source, pa.ipc.open_file(source)
        return self.open[path][1].get_batch(index)

    def close(self) -> None:
        while self.open:
            self.open.popitem()[1][0].close()


# --- shared -------------------------------------------------------------------------------------------------------

def _batches(path: str, wanted: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of the wanted columns the file has (optional columns may be missing from some files)."""
    with pq.ParquetFile(path) as parquet:
        columns = [name for name in wanted if name in parquet.schema_arrow.names]
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _ids(batch: pa.RecordBatch) -> pa.Array:
    # One string type whatever the file used (dictionary, large or view strings), so sums from files concatenate.
    return plain(batch.column("conversation_id")).cast(pa.string())


def _map_distinct(values: pa.Array, fn: Callable, type: pa.DataType) -> pa.Array:
    """fn of every value, called once per distinct value (ids and audio paths repeat over rows); nulls included."""
    distinct = pc.unique(values)
    mapped = pa.array([fn(v) for v in distinct.to_pylist()], type)
    return mapped.take(pc.index_in(values, value_set=distinct))


def _write_ids(path: str, ids: pa.Array) -> None:
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    with pa.OSFile(path, "wb") as sink, \
            pa.ipc.new_file(sink, pa.schema([("conversation_id", pa.string())]), options=_IPC_OPTIONS) as out:
        for start in range(0, len(ids), BATCH_ROWS):  # batches, so complete_ids() can read a bit at a time
            out.write_batch(pa.record_batch([ids.slice(start, BATCH_ROWS)], names=["conversation_id"]))
