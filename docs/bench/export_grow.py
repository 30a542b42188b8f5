"""A grown job's re-export: datasets extended with shards for the new conversations (jobs/export/shard_plan.py)
against rebuilding them whole, as every re-export did before.

`python docs/bench/export_grow.py WORKDIR [CONVERSATIONS=2000] [NEW=100] [TURNS=10]`

Writes a synthetic OUT (export_synthetic_out.py) of CONVERSATIONS, exports hf and webdataset, adds NEW
conversations, then times the re-export, and, on the same grown OUT, a whole rebuild (its records made to look
like another export's, so nothing is kept). Prints both wall times, their ratio and the bytes of shards written.
"""

from __future__ import annotations

import json
import os
import sys
import time

from export_synthetic_out import main as write_out

from jobs.export.command import export_job, prepare
from jobs.export.options import ExportOptions

KINDS = ("hf", "webdataset")


def export(out: str) -> float:
    opts = ExportOptions(kinds=KINDS)
    view, dest = prepare(out, None, opts)
    start = time.perf_counter()
    summary = export_job(view, dest, opts)
    wall = time.perf_counter() - start
    print(f"  {wall:.1f} s: " + "; ".join(f"{k}: {summary.datasets[k]}" for k in KINDS))
    return wall


def shard_bytes(out: str, since: float) -> int:
    """Bytes of the shard files written after `since` (mtime)."""
    total = 0
    for folder, _, names in os.walk(os.path.join(out, "exports")):
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith((".parquet", ".tar")) and os.stat(path).st_mtime > since:
                total += os.path.getsize(path)
    return total


def forget_settings(out: str) -> None:
    for kind in KINDS:
        path = os.path.join(out, "exports", kind, "_export.json")
        with open(path) as f:
            record = json.load(f)
        record["settings"] = record["source"] = "another export"
        with open(path, "w") as f:
            json.dump(record, f)


def main(work: str, conversations: int = 2000, new: int = 100, turns: int = 10) -> None:
    out = os.path.join(work, "out")
    write_out(out, conversations, turns, 1)
    print(f"first export of {conversations} conversations x {turns} turns:")
    export(out)
    write_out(out, new, turns, 1, conversations)
    print(f"{new} more conversations, re-exported:")
    mark = time.time()
    grown = export(out)
    grown_bytes = shard_bytes(out, mark)
    forget_settings(out)
    print("the same OUT, rebuilt whole:")
    mark = time.time()
    whole = export(out)
    whole_bytes = shard_bytes(out, mark)
    print(f"re-export {grown:.1f} s, {grown_bytes / 2**20:.1f} MiB of shards written; whole rebuild {whole:.1f} s, "
          f"{whole_bytes / 2**20:.1f} MiB: x{whole / grown:.1f} faster")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], *[int(a) for a in args[1:4]])
