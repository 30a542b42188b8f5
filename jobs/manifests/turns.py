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
    column: str = "turn_index"


class TurnTracker:
    def __init__(self) -> None:
        self._ids: list[str] = []                      # conversation code -> id
        self._first_file: list[int] = []               # conversation code -> file of its first row
        self._first_row: list[int] = []                # conversation code -> its first row in that file
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
        rows, codes = self._encode(file_index, offset, conv)
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
        files = np.concatenate([np.full(len(c), f, dtype=np.int32) for f, c, _, _ in self._chunks] or [[]])
        codes, turns, rows = (np.concatenate([chunk[i] for chunk in self._chunks] or [[]]) for i in (1, 2, 3))
        if not len(codes):  # no row with a usable turn index (all negative, say): those rows were reported
            return [], 0, self._case_collisions(paths)
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
        gaps = self._gaps(codes[run_starts], turns[run_starts])
        return duplicates, int(same.sum()), gaps + self._case_collisions(paths)

    def _encode(self, file_index: int, offset: int, conv: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Batch rows that have a conversation id, and their conversation codes."""
        encoded = conv.dictionary_encode()
        indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(indices >= 0)
        first_row = np.zeros(len(encoded.dictionary), dtype=np.int64)
        present, first = np.unique(indices[rows], return_index=True)
        first_row[present] = rows[first] + offset
        # Dictionary order is order of first appearance, so codes are handed out in that order too.
        lookup = np.array([self._code(name, file_index, int(row))
                           for name, row in zip(encoded.dictionary.to_pylist(), first_row.tolist())], dtype=np.int32)
        return rows, lookup[indices[rows]]

    def _code(self, conversation_id: str, file_index: int, row: int) -> int:
        code = self._codes.get(conversation_id)
        if code is None:
            code = self._codes[conversation_id] = len(self._ids)
            self._ids.append(conversation_id)
            self._first_file.append(file_index)
            self._first_row.append(row)
        return code

    def _case_collisions(self, paths: list[str]) -> list[TurnIssue]:
        """Conversations whose ids differ only in case: their files (named by the id) would be one file on a
        case-insensitive filesystem (macOS, Windows, some mounts), where one conversation overwrites the other's
        audio. Each id after the first of its group is reported at its first row."""
        first_of: dict[str, int] = {}
        issues = []
        for code, conv in enumerate(self._ids):
            seen = first_of.setdefault(conv.casefold(), code)
            if seen != code:
                where = f"{paths[self._first_file[seen]]} row {self._first_row[seen]}"
                issues.append(TurnIssue(self._first_file[code], self._first_row[code], conv, None,
                                        f"conversation_id {conv!r} differs only in case from {self._ids[seen]!r} "
                                        f"(first at {where}): their files would collide on a case-insensitive "
                                        "filesystem; rename one", column="conversation_id"))
        return issues

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
