"""The manifest columns and their checks, vectorised over one Arrow record batch.

Checks return the rows that fail, not Problems: the caller decides how many of them to spell out
(validation of a million bad rows must not build a million messages).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.storage import TMP_PREFIX

ID_CHARS = "letters, digits, '.', '_' or '-'"
_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
_ID_RE = re.compile(_ID_PATTERN)
RESERVED_ID_PREFIX = TMP_PREFIX  # storage names in-flight writes so; an id (a file name) may not look like one
INT64_MAX = 2**63 - 1
_is_string_view = getattr(pa.types, "is_string_view", lambda t: False)  # pyarrow < 16 has no string views


@dataclass(frozen=True)
class Column:
    name: str
    kind: str                  # "string", "integer" or "number" (integer or float)
    required: bool
    rule: str                  # what a valid value is, for messages and the docs
    low: float | None = None   # numeric range; every integer column has low >= 0 (see _in_range)
    high: float | None = None
    low_open: bool = False     # True: values must be > low rather than >= low
    null_hint: str = ""        # what to do about a null in a required column


COLUMNS: tuple[Column, ...] = (
    Column("conversation_id", "string", True, f"1-128 {ID_CHARS}",
           null_hint="give every row the id of its conversation"),
    Column("turn_index", "integer", True, "an integer >= 0, numbering each conversation's turns 0..n-1",
           0, INT64_MAX, null_hint="number every turn 0..n-1 within its conversation"),
    Column("speaker", "integer", True, "an integer speaker id >= 0", 0, INT64_MAX,
           null_hint="give every turn a speaker id (an integer >= 0)"),
    Column("text", "string", True, "the words to speak (for a given turn: the transcript of its audio)",
           null_hint="give the words to speak (for a given turn, the transcript of its audio)"),
    Column("audio", "string", False, "a path or s3:// URI of a recording, or null for a turn to render"),
    Column("temperature", "number", False, "a number > 0 and <= 5, or null for the job default",
           0, 5, low_open=True),
    Column("top_k", "integer", False, "an integer from 1 to 2051, or null for the job default", 1, 2051),
    Column("max_audio_length_ms", "integer", False,
           "an integer from 1 to 120000, or null for the job default", 1, 120_000),
    Column("seed", "integer", False, "an integer from 0 to 2**63-1, or null for the job default",
           0, INT64_MAX),
    Column("pause_ms", "integer", False,
           "an integer from 0 to 60000 (silence after the turn), or null for the job default", 0, 60_000),
)
COLUMN_BY_NAME = {c.name: c for c in COLUMNS}
COLUMN_ORDER = {c.name: i for i, c in enumerate(COLUMNS)}
REQUIRED = tuple(c.name for c in COLUMNS if c.required)


@dataclass(frozen=True)
class Issue:
    """Rows of one batch that fail one check of one column."""
    rows: np.ndarray                   # batch-local row numbers, ascending
    column: str
    message: Callable[[int], str]      # batch-local row -> message


def id_problem(value: str) -> str | None:
    """Why `value` is not a usable conversation id (ids name output files), or None."""
    if value in (".", ".."):
        return f"conversation_id {value!r} is not allowed (it would be a path): use 1-128 {ID_CHARS}"
    if value.startswith(RESERVED_ID_PREFIX):
        return f"conversation_id {value!r} starts with {RESERVED_ID_PREFIX!r}, reserved for files being written"
    if _ID_RE.match(value):
        return None
    if not value:
        return f"conversation_id is empty: use 1-128 {ID_CHARS}"
    if len(value) > 128:
        return f"conversation_id is {len(value)} characters long: use at most 128"
    bad = sorted({ch for ch in value if not _ID_RE.match(ch)})
    return f"conversation_id {value!r} contains {''.join(bad)!r}: use only {ID_CHARS}"


def type_problem(col: Column, arrow_type: pa.DataType) -> str | None:
    """Why a column of this Arrow type cannot be read as `col`, or None."""
    if pa.types.is_dictionary(arrow_type):  # e.g. a pandas categorical
        arrow_type = arrow_type.value_type
    if pa.types.is_null(arrow_type):  # what pyarrow infers for a column of only None
        return f"{col.name} is null in every row: {col.null_hint}"
    if col.kind == "string":
        if _is_string(arrow_type):
            return None
        return f"{col.name} has type {arrow_type}: use a string type (e.g. cast with .astype(str))"
    if pa.types.is_integer(arrow_type) or (col.kind == "number" and pa.types.is_floating(arrow_type)):
        return None
    if pa.types.is_floating(arrow_type):
        return (f"{col.name} has type {arrow_type}: use an integer type (pandas turns integer columns with "
                "nulls into floats; use the 'Int64' dtype or cast with .astype('int64'))")
    wanted = "an integer or float type" if col.kind == "number" else "an integer type"
    return f"{col.name} has type {arrow_type}: use {wanted}"


def plain(arr: pa.Array) -> pa.Array:
    """Undo encodings the checks need not know about."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if _is_string_view(arr.type):
        arr = arr.cast(pa.large_string())
    return arr


def check_columns(cols: dict[str, pa.Array]) -> tuple[list[Issue], dict[str, np.ndarray]]:
    """Issues of all present, well-typed columns, and per column a mask of rows that are null-or-bad."""
    issues: list[Issue] = []
    bad: dict[str, np.ndarray] = {}
    for col in COLUMNS:
        if col.name not in cols:
            continue
        arr = cols[col.name]
        found = list(_column_issues(col, arr))
        mask = np.zeros(len(arr), dtype=bool)
        for issue in found:
            mask[issue.rows] = True
        issues += found
        bad[col.name] = mask
    return issues, bad


def _column_issues(col: Column, arr: pa.Array) -> Iterator[Issue]:
    if col.required:
        yield from _issue(col, arr, pc.is_null(arr), lambda v: f"{col.name} is null: {col.null_hint}")
    if col.name == "conversation_id":
        invalid = pc.or_(pc.or_(pc.invert(pc.match_substring_regex(arr, _ID_PATTERN)),
                                pc.is_in(arr, pa.array([".", ".."]))),
                         pc.starts_with(arr, RESERVED_ID_PREFIX))
        yield from _issue(col, arr, invalid, id_problem)
    elif col.kind == "string":
        yield from _issue(col, arr, _is_blank(arr), lambda v: _blank_message(col.name, v))
    else:
        yield from _issue(col, arr, pc.invert(_in_range(col, arr)),
                          lambda v: f"{col.name} {v} is out of range: use {col.rule}")


def _issue(col: Column, arr: pa.Array, mask: pa.Array, message: Callable) -> Iterator[Issue]:
    rows = np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
    if len(rows):
        yield Issue(rows, col.name, lambda r: message(arr[int(r)].as_py()))


def _in_range(col: Column, arr: pa.Array) -> pa.Array:
    if pa.types.is_uint64(arr.type):
        # Values above 2**63-1 wrap to negatives here, which every integer column rejects (low >= 0).
        arr = arr.cast(pa.int64(), safe=False)
    elif pa.types.is_floating(arr.type):
        arr = arr.cast(pa.float64())  # comparisons are not implemented for float16
    above = pc.greater(arr, col.low) if col.low_open else pc.greater_equal(arr, col.low)
    return pc.and_(above, pc.less_equal(arr, col.high))  # NaN compares false: out of range


def _is_blank(arr: pa.Array) -> pa.Array:
    return pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0)


def _blank_message(name: str, value: str) -> str:
    state = "empty" if value == "" else "only whitespace"
    if name == "audio":
        return f"audio is {state}: leave it null for a turn to render, or give the path of a recording"
    return f"text is {state}: give the words to speak"


def _is_string(arrow_type: pa.DataType) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or _is_string_view(arrow_type)
