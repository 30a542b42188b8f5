"""What each conversation needs of the backbone's window besides a cast: its given turns, which the engine
always keeps as context, and its longest turn to render. Collected while validation counts text positions
(manifest.py), so a job with `--voices` tokenizes its texts once; check_window (voices.py) adds the cast.

Kept as one small Arrow table per record batch, aggregated per conversation as it goes: memory grows with the
number of conversations, not of turns. Only sums, maxima and minima are kept, so the given turns count only
where they all come before the first turn to render (voice prompts, the usual case): every rendered turn then
has all of them in context. Where a given turn comes later, which rendered turns see it depends on the order, so
the given turns are left out (`given_first` false): the check then never refuses a job that fits, and a
conversation that does not fit still fails alone when it runs (ContextTooLong).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA = pa.schema([("conversation_id", pa.string()), ("given", pa.int64()), ("longest", pa.int64()),
                    ("given_first", pa.bool_())])
_PARTS = pa.schema([("conversation_id", pa.string()), ("given", pa.int64()), ("longest", pa.int64()),
                    ("last_given", pa.int64()), ("first_rendered", pa.int64())])
_NONE = 2**62  # first_rendered of a batch without rendered turns of the conversation


class ConversationRooms:
    def __init__(self) -> None:
        self._parts: list[pa.Table] = []

    def add(self, conversation_ids: list[str], turn_indices: list[int], is_given: list[bool],
            positions: list[int]) -> None:
        """Rows of one record batch: a turn's positions are its text plus its audio frames (a given turn's
        recording with its EOS frame, a rendered turn's max_audio_length_ms)."""
        if not conversation_ids:
            return
        given = pa.array(is_given, pa.bool_())
        need, turn = pa.array(positions, pa.int64()), pa.array(turn_indices, pa.int64())
        rows = pa.table({"conversation_id": pa.array(conversation_ids, pa.string()),
                         "given": pc.if_else(given, need, 0), "longest": pc.if_else(given, 0, need),
                         "last_given": pc.if_else(given, turn, -1), "first_rendered": pc.if_else(given, _NONE, turn)})
        self._parts.append(_per_conversation(rows))

    def table(self) -> pa.Table:
        """One row per conversation seen: the sum of its given turns' positions (0 unless they all come first),
        its longest turn's, and whether its given turns all come first."""
        rows = _per_conversation(pa.concat_tables(self._parts)) if self._parts else _PARTS.empty_table()
        first = pc.less(rows["last_given"], rows["first_rendered"])
        return pa.table([rows["conversation_id"], pc.if_else(first, rows["given"], 0), rows["longest"], first],
                        schema=SCHEMA)


def _per_conversation(rows: pa.Table) -> pa.Table:
    out = rows.group_by("conversation_id").aggregate([("given", "sum"), ("longest", "max"), ("last_given", "max"),
                                                      ("first_rendered", "min")])
    return pa.table([out["conversation_id"], out["given_sum"], out["longest_max"], out["last_given_max"],
                     out["first_rendered_min"]], schema=_PARTS)
