"""Duplicate and missing turn indices across all manifest files, in compact memory.

Rows of one conversation may be spread over many files in any order, so these checks can only run once every
file has been read. Per row we keep four integers in numpy arrays (conversation code, turn index, file, row),
about 20 bytes a turn (a few times that while sorting at the end), instead of Python objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MAX_LISTED_GAPS = 10


@dataclass(frozen=True)
class TurnIssue:
    file_index: int
    row: int | None            # None for a problem of the whole conversation
    conversation_id: str
    turn_index: int | None
    message: str


class TurnTracker:
    def __init__(self) -> None:
        self._ids: list[str] = []                      # conversation code -> id
        self._first_file: list[int] = []               # conversation code -> file of its first row
        self._codes: dict[str, int] = {}
        self._incomplete: set[int] = set()             # conversations with a row whose turn_index is unusable
        self._ids_complete = True                      # False once some row's conversation_id could not be read
        self._chunks: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []

    @property
    def conversations(self) -> int:
        return len(self._ids)

    def add(self, file_index: int, offset: int, conv: pa.Array | None, turns: pa.Array | None,
            turn_bad: np.ndarray | None) -> None:
        """Record one batch. `turns`/`turn_bad` are None when the file has no usable turn_index column."""
        if conv is None or conv.null_count:
            # Rows without a conversation could be any conversation's missing turns.
            self._ids_complete = False
        if conv is None:
            return
        rows, codes = self._encode(file_index, conv)
        if turns is None:
            self._incomplete.update(np.unique(codes).tolist())
            return
        ok = ~turn_bad[rows]
        self._incomplete.update(np.unique(codes[~ok]).tolist())
        values = pc.fill_null(turns.cast(pa.int64(), safe=False), -1).to_numpy(zero_copy_only=False)
        self._chunks.append((file_index, codes[ok], values[rows[ok]], rows[ok] + offset))

    def finish(self, paths: list[str], limit: int) -> tuple[list[TurnIssue], int, list[TurnIssue]]:
        """(first `limit` duplicates in file/row order, number of duplicates, gaps in order of first appearance).

        `paths` names the files by index. Codes are handed out in order of first appearance, so the gaps,
        found in code order, come out in that order too.
        """
        if not self._chunks:
            return [], 0, []
        files = np.concatenate([np.full(len(c), f, dtype=np.int32) for f, c, _, _ in self._chunks])
        codes, turns, rows = (np.concatenate([chunk[i] for chunk in self._chunks]) for i in (1, 2, 3))
        order = np.lexsort((rows, files, turns, codes))
        codes, turns, files, rows = codes[order], turns[order], files[order], rows[order]
        same = (codes[1:] == codes[:-1]) & (turns[1:] == turns[:-1])
        later = np.flatnonzero(same) + 1
        later = later[np.lexsort((rows[later], files[later]))][:limit]
        run_starts = np.flatnonzero(np.concatenate([[True], ~same]))
        duplicates = []
        for i in later.tolist():
            first = run_starts[np.searchsorted(run_starts, i, side="right") - 1]
            conv, turn = self._ids[codes[i]], int(turns[i])
            duplicates.append(TurnIssue(int(files[i]), int(rows[i]), conv, turn,
                                        f"duplicate turn_index {turn} in conversation {conv} (first at "
                                        f"{paths[files[first]]} row {rows[first]}): keep one row per turn"))
        return duplicates, int(same.sum()), self._gaps(codes[run_starts], turns[run_starts])

    def _encode(self, file_index: int, conv: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Batch rows that have a conversation id, and their conversation codes."""
        encoded = conv.dictionary_encode()
        indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(indices >= 0)
        # Dictionary order is order of first appearance, so codes are handed out in that order too.
        lookup = np.array([self._code(name, file_index) for name in encoded.dictionary.to_pylist()], dtype=np.int32)
        return rows, lookup[indices[rows]]

    def _code(self, conversation_id: str, file_index: int) -> int:
        code = self._codes.get(conversation_id)
        if code is None:
            code = self._codes[conversation_id] = len(self._ids)
            self._ids.append(conversation_id)
            self._first_file.append(file_index)
        return code

    def _gaps(self, codes: np.ndarray, turns: np.ndarray) -> list[TurnIssue]:
        """`codes`/`turns`: unique pairs sorted by code, then turn."""
        if not self._ids_complete or not len(codes):
            return []
        starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
        ends = np.concatenate([starts[1:], [len(codes)]])
        # Unique turns >= 0 with n of them have no gaps exactly when the largest is n-1.
        gappy = np.flatnonzero(turns[ends - 1] != ends - starts - 1)
        issues = []
        for g in gappy.tolist():
            code = int(codes[starts[g]])
            if code in self._incomplete:
                continue  # its unusable rows were reported already; the gap would just repeat them
            missing, total = _missing(turns[starts[g]:ends[g]])
            listed = ", ".join(map(str, missing)) + (f", ... ({total} in all)" if total > len(missing) else "")
            issues.append(TurnIssue(self._first_file[code], None, self._ids[code], None,
                                    f"turn indices must be 0..n-1 without gaps: missing {listed}; "
                                    "add the missing turns or renumber"))
        return issues


def _missing(turns: np.ndarray) -> tuple[list[int], int]:
    """The first few missing values of 0..max(turns), and how many are missing; `turns` sorted and unique."""
    previous = np.concatenate([[-1], turns[:-1]])
    listed: list[int] = []
    for low, high in zip((previous + 1).tolist(), turns.tolist()):
        listed += range(low, min(high, low + _MAX_LISTED_GAPS - len(listed)))
        if len(listed) >= _MAX_LISTED_GAPS:
            break
    return listed, int(turns[-1]) + 1 - len(turns)
