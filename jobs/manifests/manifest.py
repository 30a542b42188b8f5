"""The manifest contract: Parquet rows of dialogue turns in, validated conversations out.

Validation streams every file in record batches and keeps only compact per-turn integers across files
(see jobs.manifests.turns), so it can check manifests far larger than memory. Loading builds Python objects for
every turn and is meant for jobs whose turns fit in memory.
"""
from __future__ import annotations

import glob
import heapq
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.manifests.audio import AudioProbe, resolve_audio, scheme_problem
from jobs.manifests.columns import (COLUMN_BY_NAME, COLUMN_ORDER, COLUMNS, Issue, check_columns, plain,
                                   type_problem)
from jobs.manifests.rooms import ConversationRooms
from jobs.manifests.turns import TurnIssue, TurnTracker

BATCH_ROWS = 65_536
FRAME_MS = 80            # one Mimi frame, one backbone position
_ERROR_LINES = 20        # problems quoted in a ManifestError's message


@dataclass(frozen=True)
class TurnSpec:
    conversation_id: str
    turn_index: int
    speaker: int
    text: str
    audio: str | None = None          # absolute local path or URI when the turn is given
    temperature: float | None = None
    top_k: int | None = None
    max_audio_length_ms: int | None = None
    seed: int | None = None
    pause_ms: int | None = None

    @property
    def is_given(self) -> bool:
        return self.audio is not None


@dataclass
class ConversationSpec:
    conversation_id: str
    turns: list[TurnSpec]             # sorted by turn_index

    @property
    def num_to_render(self) -> int:
        return sum(not turn.is_given for turn in self.turns)


@dataclass(frozen=True)
class Problem:
    file: str                         # the manifest file, or the argument when no file could be found or read
    conversation_id: str | None
    turn_index: int | None
    column: str | None
    message: str                      # what is wrong and what to do
    row: int | None = None            # 0-based row in the file, shown when the turn is unknown

    def __str__(self) -> str:
        if self.conversation_id is not None and self.turn_index is not None:
            where = f"row {self.conversation_id}/{self.turn_index}"
        elif self.row is not None:
            where = f"row {self.row}"
        elif self.conversation_id is not None:
            where = f"conversation {self.conversation_id}"
        else:
            where = None
        parts = (self.file, where, self.column and f"column {self.column}", self.message)
        return ": ".join(part for part in parts if part)


@dataclass
class ValidationReport:
    problems: list[Problem]
    files: list[str]
    conversations: int
    turns_to_render: int
    given_turns: int
    speakers: int                     # distinct speaker ids
    ignored_columns: list[str]
    notes: list[str] = field(default_factory=list)  # checks that could not run, and why
    rooms: pa.Table | None = None  # with collect_rooms: each conversation's given and longest turn (rooms.py)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        text = (f"{_plural(len(self.files), 'file')}, {_plural(self.conversations, 'conversation')}, "
                f"{_plural(self.turns_to_render, 'turn')} to render, {_plural(self.given_turns, 'given turn')}, "
                f"{_plural(self.speakers, 'speaker')}")
        if self.ignored_columns:
            text += f"; ignored columns: {', '.join(self.ignored_columns)}"
        return "\n".join([text, *self.notes])


class ManifestError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:_ERROR_LINES]]
        if len(self.problems) > _ERROR_LINES:
            lines.append(f"... {len(self.problems) - _ERROR_LINES} more lines in .problems")
        super().__init__("invalid manifest:\n" + "\n".join(lines))

    def __reduce__(self):
        # Rebuild from the problems, not the message, when pickled (e.g. raised inside a Ray task).
        return ManifestError, (self.problems,)


def expand_manifest_paths(args: list[str]) -> tuple[list[str], list[Problem]]:
    """Manifest files named by files, folders (every *.parquet below) and glob patterns, each file once."""
    if not args:
        return [], [Problem("", None, None, None, "no manifest given: pass a Parquet file, a folder or a glob pattern")]
    files, problems, seen = [], [], set()
    for arg in args:
        found, problem = _expand(arg)
        if problem:
            problems.append(Problem(arg, None, None, None, problem))
        for path in found:
            # The same file named twice would make every one of its turns a duplicate.
            if os.path.realpath(path) not in seen:
                seen.add(os.path.realpath(path))
                files.append(path)
    return files, problems


def validate_manifests(args: list[str], *, text_positions: Callable[[int, str], int] | None = None,
                       window: int = 2048, default_max_audio_length_ms: int = 10_000,
                       check_audio: bool = True, max_problems: int = 1000,
                       collect_rooms: bool = False) -> ValidationReport:
    """Check manifests against the contract in manifests/README.md, reading them in bounded memory.

    text_positions(speaker, text): backbone positions the turn's text takes; None skips the window check. When it
    has a `many(speakers, texts)` attribute, that is called once per record batch instead.
    A given turn's window check needs its duration, so it runs only for local recordings read with check_audio.
    collect_rooms: also total, per conversation, the positions its given turns and its longest turn take
    (report.rooms; the cast's window check adds its prompts to them).
    """
    files, path_problems = expand_manifest_paths(args)
    validator = _Validator(files, text_positions, window, default_max_audio_length_ms, check_audio, max_problems)
    validator.rooms = ConversationRooms() if collect_rooms else None
    for i, problem in enumerate(path_problems):
        validator.log.add((-1, i, 0), problem)
    for index in range(len(files)):
        validator.check_file(index)
    return validator.report()


def load_conversations(args: list[str], **validate_kwargs) -> list[ConversationSpec]:
    """Validate (same keyword arguments as validate_manifests), then load every turn, sorted by conversation_id.

    Raises ManifestError when validation finds problems.
    """
    report = validate_manifests(args, **validate_kwargs)
    if not report.ok:
        raise ManifestError(report.problems)
    turns: dict[str, list[TurnSpec]] = defaultdict(list)
    for path in report.files:
        for turn in _read_turns(path):
            turns[turn.conversation_id].append(turn)
    return [ConversationSpec(cid, sorted(ts, key=lambda t: t.turn_index)) for cid, ts in sorted(turns.items())]


class _ProblemLog:
    """Problems keyed by (file index, row, column order), the first `limit` kept and the rest only counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept: list[tuple[tuple[int, int, int], Problem]] = []
        self.total = 0

    @property
    def room(self) -> int:
        return self.limit - len(self.kept)

    def add(self, key: tuple[int, int, int], problem: Problem) -> None:
        self.total += 1
        if self.room > 0:
            self.kept.append((key, problem))

    def result(self, duplicates: list, duplicate_count: int, gaps: list[Problem]) -> list[Problem]:
        """Row problems merged with the (keyed) duplicates in file/row order, then whole-conversation gaps."""
        merged = [p for _, p in heapq.merge(self.kept, duplicates, key=lambda kp: kp[0])] + gaps
        shown = merged[:self.limit]
        hidden = self.total + duplicate_count + len(gaps) - len(shown)
        if hidden:
            shown.append(Problem("", None, None, None, f"... and {hidden} more problems"))
        return shown


class _Unreadable(Exception):
    pass


class _Validator:
    def __init__(self, paths: list[str], text_positions: Callable[[int, str], int] | None, window: int,
                 default_max_audio_length_ms: int, check_audio: bool, max_problems: int) -> None:
        self.paths = paths
        self.text_positions = text_positions
        self.window = window
        self.default_max_ms = default_max_audio_length_ms
        self.check_audio = check_audio
        self.log = _ProblemLog(max_problems)
        self.turns = TurnTracker()
        self.audio = AudioProbe()
        self.speakers: set[int] = set()
        self.given = self.to_render = 0
        self.ignored: dict[str, None] = {}   # an ordered set
        self.rooms: ConversationRooms | None = None

    def check_file(self, index: int) -> None:
        offset = 0
        try:
            with _open(self.paths[index]) as parquet:
                columns = self._check_schema(index, parquet.schema_arrow)
                for batch in _read_batches(parquet, columns):
                    self._check_batch(index, offset, batch)
                    offset += batch.num_rows
        except _Unreadable as err:
            self.log.add((index, offset, -1), Problem(
                self.paths[index], None, None, None,
                f"cannot read as Parquet ({err}): check that this is a complete Parquet file"))

    def report(self) -> ValidationReport:
        duplicates, duplicate_count, gaps = self.turns.finish(self.paths, self.log.limit)
        keyed = [((d.file_index, d.row, COLUMN_ORDER["turn_index"]), self._turn_problem(d)) for d in duplicates]
        problems = self.log.result(keyed, duplicate_count, [self._turn_problem(g) for g in gaps])
        return ValidationReport(problems, list(self.paths), self.turns.conversations, self.to_render, self.given,
                                len(self.speakers), list(self.ignored),
                                rooms=self.rooms.table() if self.rooms is not None else None)

    def _check_schema(self, index: int, schema: pa.Schema) -> list[str]:
        """Report missing and mistyped columns; return the known columns that can be checked row by row."""
        self.ignored.update((name, None) for name in schema.names if name not in COLUMN_BY_NAME)
        usable = []
        for col in COLUMNS:
            if col.name not in schema.names:
                problem = f"missing required column {col.name}: add the column ({col.rule})" if col.required else None
            elif (times := schema.names.count(col.name)) > 1:
                problem = f"column {col.name} appears {times} times: keep one"
            elif not col.required and pa.types.is_null(schema.field(col.name).type):
                continue  # only nulls (pyarrow's type for a column of None, e.g. no turn given): as if absent
            else:
                problem = type_problem(col, schema.field(col.name).type)  # one field of that name: checked above
            if problem:
                self.log.add((index, -1, COLUMN_ORDER[col.name]),
                             Problem(self.paths[index], None, None, col.name, problem))
            elif col.name in schema.names:
                usable.append(col.name)
        return usable

    def _check_batch(self, index: int, offset: int, batch: pa.RecordBatch) -> None:
        cols = {name: plain(batch.column(name)) for name in batch.schema.names}
        issues, bad = check_columns(cols)
        given = (pc.is_valid(cols["audio"]).to_numpy(zero_copy_only=False) if "audio" in cols
                 else np.zeros(batch.num_rows, dtype=bool))
        audio_issue, durations = self._audio_issue(self.paths[index], cols, bad, given)
        issues += [i for i in (audio_issue, self._length_issue(cols, bad, given, durations)) if i]
        self._log_issues(index, offset, cols, bad, issues)
        self.turns.add(index, offset, cols.get("conversation_id"), cols.get("turn_index"), bad.get("turn_index"))
        self.given += int(given.sum())
        self.to_render += batch.num_rows - int(given.sum())
        if "speaker" in cols:
            self.speakers.update(pc.unique(cols["speaker"].filter(pa.array(~bad["speaker"]))).to_pylist())

    def _audio_issue(self, path: str, cols: dict, bad: dict, given: np.ndarray) -> tuple[Issue | None, dict]:
        """Problems of given turns' recordings, and the duration (ms) of each recording that could be read."""
        messages: dict[int, str] = {}
        durations: dict[int, float] = {}
        if "audio" in cols:
            for r in np.flatnonzero(given & ~bad["audio"]).tolist():
                problem, duration = self._probe(resolve_audio(cols["audio"][r].as_py(), path))
                if problem:
                    messages[r] = problem
                elif duration is not None:
                    durations[r] = duration
        return _row_issue("audio", messages), durations

    def _probe(self, resolved: str) -> tuple[str | None, float | None]:
        problem = scheme_problem(resolved)
        if problem or not self.check_audio:
            return problem, None
        return self.audio.check(resolved)

    def _length_issue(self, cols: dict, bad: dict, given: np.ndarray, durations: dict) -> Issue | None:
        """Turns whose text plus audio cannot fit the backbone's window even with no other context."""
        if self.text_positions is None or "text" not in cols or "speaker" not in cols:
            return None
        n = len(given)
        ok = ~bad["text"] & ~bad["speaker"] & ~bad.get("max_audio_length_ms", np.zeros(n, dtype=bool))
        texts, speakers = cols["text"].to_pylist(), cols["speaker"].to_pylist()
        max_ms = cols["max_audio_length_ms"].to_pylist() if "max_audio_length_ms" in cols else [None] * n
        messages = {}
        rows = [r for r in np.flatnonzero(ok).tolist()
                if self._frames(given[r], durations.get(r), max_ms[r]) is not None]
        counts = self._count_positions([speakers[r] for r in rows], [texts[r] for r in rows])
        needs = [positions + self._frames(given[r], durations.get(r), max_ms[r]) for r, positions in zip(rows, counts)]
        for r, positions, need in zip(rows, counts, needs):
            if need > self.window:
                at_least = "at least " if getattr(self.text_positions, "lower_bound", False) else ""
                messages[r] = (f"text too long to fit the model's window ({at_least}{positions} positions + "
                               f"{need - positions} audio frames > {self.window}): shorten the text or split the turn")
        if self.rooms is not None and "conversation_id" in cols and "turn_index" in cols:
            ids, turns = cols["conversation_id"].to_pylist(), cols["turn_index"].to_pylist()
            unusable = bad.get("conversation_id", np.zeros(n, dtype=bool)) | bad.get("turn_index", np.zeros(n, dtype=bool))
            kept = [i for i, r in enumerate(rows) if not unusable[r] and ids[r] is not None and turns[r] is not None]
            self.rooms.add([ids[rows[i]] for i in kept], [turns[rows[i]] for i in kept],
                           [bool(given[rows[i]]) for i in kept], [needs[i] for i in kept])
        return _row_issue("text", messages)

    def _count_positions(self, speakers: list[int], texts: list[str]) -> list[int]:
        # A batch counter (the tokenizer's batch call) is ~50x faster than one call per row on big manifests.
        many = getattr(self.text_positions, "many", None)
        if many is not None:
            return list(many(speakers, texts))
        return [self.text_positions(s, t) for s, t in zip(speakers, texts)]

    def _frames(self, is_given: bool, duration_ms: float | None, max_ms: int | None) -> int | None:
        """Audio frames a turn takes in the window; None when unknown (a given recording that was not read)."""
        if is_given:
            return None if duration_ms is None else math.ceil(duration_ms / FRAME_MS) + 1  # + its EOS frame
        # Whole frames, as the engine counts a turn's limit.
        return max(1, (self.default_max_ms if max_ms is None else max_ms) // FRAME_MS)

    def _log_issues(self, index: int, offset: int, cols: dict, bad: dict, issues: list[Issue]) -> None:
        """Spell out only as many issues as the log has room for, in row then column order."""
        room = max(self.log.room, 0)
        first = sorted(((int(r), COLUMN_ORDER[i.column], i) for i in issues for r in i.rows[:room]),
                       key=lambda t: t[:2])[:room]
        self.log.total += sum(len(i.rows) for i in issues) - len(first)
        for r, order, issue in first:
            conv, turn = _label(cols, bad, r)
            self.log.add((index, offset + r, order),
                         Problem(self.paths[index], conv, turn, issue.column, issue.message(r), row=offset + r))

    def _turn_problem(self, issue: TurnIssue) -> Problem:
        return Problem(self.paths[issue.file_index], issue.conversation_id, issue.turn_index, issue.column,
                       issue.message, row=issue.row)


def _label(cols: dict, bad: dict, r: int) -> tuple[str | None, int | None]:
    """The row's conversation id (when valid) and turn index (when present), to name it in a Problem."""
    conv = None if "conversation_id" not in cols or bad["conversation_id"][r] else cols["conversation_id"][r].as_py()
    turn = cols["turn_index"][r].as_py() if "turn_index" in cols else None
    return conv, turn


def _row_issue(column: str, messages: dict[int, str]) -> Issue | None:
    """An Issue from per-row messages collected in ascending row order."""
    if not messages:
        return None
    return Issue(np.fromiter(messages, dtype=np.int64), column, lambda r: messages[int(r)])


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise _Unreadable(err) from err


def _read_batches(parquet: pq.ParquetFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns`; read errors become _Unreadable, errors of the caller's checks do not."""
    if not columns:
        return  # nothing to check row by row; iter_batches would read every column instead
    try:
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise _Unreadable(err) from err


def _read_turns(path: str) -> Iterator[TurnSpec]:
    with pq.ParquetFile(path) as parquet:
        names = [c.name for c in COLUMNS if c.name in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=names):
            for row in batch.to_pylist():
                yield _turn(row, path)


def _turn(row: dict, path: str) -> TurnSpec:
    audio, temperature = row.get("audio"), row.get("temperature")
    return TurnSpec(**{**row, "audio": None if audio is None else resolve_audio(audio, path),
                       "temperature": None if temperature is None else float(temperature)})


def _expand(arg: str) -> tuple[list[str], str | None]:
    """Files named by one argument, or a problem saying why there are none."""
    if os.path.isdir(arg):
        found = _parquet_files_below(arg)
        return found, None if found else "folder holds no .parquet files: check the folder or name the files"
    if os.path.exists(arg):
        return [arg], None
    if any(ch in arg for ch in "*?["):
        found = [f for match in sorted(glob.glob(arg, recursive=True))
                 for f in (_parquet_files_below(match) if os.path.isdir(match) else [match])]
        return found, None if found else "pattern matches no files: check it (quote it so the shell leaves it alone)"
    return [], "no such file or folder: check the path"


def _parquet_files_below(folder: str) -> list[str]:
    """Sorted *.parquet files below `folder`, skipping names that start with '.' or '_' as Spark and pyarrow
    do (_SUCCESS markers, _temporary folders, hidden checksum files), and csm-render output folders (those with
    a job.json): an OUT kept beside the manifests holds metadata Parquet files that are not manifests."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))
                   and not os.path.exists(os.path.join(root, d, "job.json"))]
        found += [os.path.join(root, n) for n in names if n.endswith(".parquet") and not n.startswith((".", "_"))]
    return sorted(found)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
