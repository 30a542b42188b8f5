"""Write an N-turn manifest for timing validation at scale, streaming one row group at a time.

    python manifests/examples/make_big_manifest.py 1000000 /tmp/big.parquet
    time csm-render validate /tmp/big.parquet

Conversations have --turns-per-conversation turns (the last one may be shorter), two alternating speakers,
and sampling settings on some rows. Rows within a row group are shuffled (seeded), as manifests may be.
"""
import argparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 65_536
SENTENCES = [
    "Did you remember to buy the bread?",
    "I did, and I also picked up some cheese.",
    "It leaves in five minutes from platform two.",
    "Looks like rain again this afternoon.",
    "Good thing I brought an umbrella.",
    "We should leave early to beat the traffic tomorrow morning.",
]


def row_group(start: int, stop: int, turns_per_conversation: int, rng: np.random.Generator) -> pa.Table:
    rows = rng.permutation(np.arange(start, stop))
    conversation, turn = np.divmod(rows, turns_per_conversation)
    def some(every: int, values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        return pa.array(values, arrow_type, mask=rows % every != 0)
    return pa.table({
        "conversation_id": pa.array([f"conv-{c:09d}" for c in conversation.tolist()], pa.string()),
        "turn_index": pa.array(turn, pa.int32()),
        "speaker": pa.array(turn % 2, pa.int32()),
        "text": pa.array([SENTENCES[r % len(SENTENCES)] for r in rows.tolist()], pa.string()),
        "temperature": some(5, np.full(len(rows), 0.8), pa.float64()),
        "top_k": some(7, np.full(len(rows), 40), pa.int32()),
        "seed": some(3, rows, pa.int64()),
        "pause_ms": some(4, np.full(len(rows), 300), pa.int32()),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of turns (rows)")
    parser.add_argument("out", help="output .parquet file")
    parser.add_argument("--turns-per-conversation", type=int, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, args.n, ROW_GROUP):
        group = row_group(start, min(start + ROW_GROUP, args.n), args.turns_per_conversation, rng)
        writer = writer or pq.ParquetWriter(args.out, group.schema)
        writer.write_table(group, row_group_size=ROW_GROUP)
    if writer is None:  # n == 0: still write a valid, empty manifest
        writer = pq.ParquetWriter(args.out, row_group(0, 0, args.turns_per_conversation, rng).schema)
    writer.close()


if __name__ == "__main__":
    main()
