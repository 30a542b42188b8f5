"""What each conversation needs of the backbone's window besides a cast: its given turns, which the engine
always keeps as context, and its longest turn to render. Collected while validation counts text positions
(manifest.py), so a job with `--voices` tokenizes its texts once; check_window (voices.py) adds the cast.

Kept as one small Arrow table per record batch, aggregated per conversation as it goes: memory grows with the
number of conversations, not of turns.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA = pa.schema([("conversation_id", pa.string()), ("given", pa.int64()), ("longest", pa.int64())])


class ConversationRooms:
    def __init__(self) -> None:
        self._parts: list[pa.Table] = []

    def add(self, conversation_ids: list[str], is_given: list[bool], positions: list[int]) -> None:
        """Rows of one record batch: a turn's positions are its text plus its audio frames (a given turn's
        recording with its EOS frame, a rendered turn's max_audio_length_ms)."""
        if not conversation_ids:
            return
        given = pa.array(is_given, pa.bool_())
        need = pa.array(positions, pa.int64())
        rows = pa.table({"conversation_id": pa.array(conversation_ids, pa.string()),
                         "given": pc.if_else(given, need, 0), "longest": pc.if_else(given, 0, need)})
        self._parts.append(_per_conversation(rows))

    def table(self) -> pa.Table:
        """One row per conversation seen: the sum of its given turns' positions, its longest turn's."""
        if not self._parts:
            return SCHEMA.empty_table()
        return _per_conversation(pa.concat_tables(self._parts))


def _per_conversation(rows: pa.Table) -> pa.Table:
    out = rows.group_by("conversation_id").aggregate([("given", "sum"), ("longest", "max")])
    return pa.table([out["conversation_id"], out["given_sum"], out["longest_max"]], schema=SCHEMA)
