"""Peak memory and time of `csm-render export` on a large OUT (made by docs/bench/export_synthetic_out.py): each
kind alone, in its own process (so each peak is its own), to OUT/exports; all kinds at once to DEST; then all
kinds again to OUT/exports, where everything is up to date (the cost of a re-run).

`python docs/bench/export_bench.py OUT DEST`
"""

from __future__ import annotations

import json
import subprocess
import sys

ALL = ("conversations", "captions", "hf", "webdataset")
CHILD = """
import resource, sys, time
from jobs.export.command import export_job, prepare
from jobs.export.options import ExportOptions
opts = ExportOptions(kinds=tuple(sys.argv[2].split(",")))
start = time.monotonic()
view, dest = prepare(sys.argv[1], sys.argv[3] or None, opts)
summary = export_job(view, dest, opts)
print(summary.text(), file=sys.stderr)
print(time.monotonic() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(out: str, kinds: tuple[str, ...], dest: str = "") -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, out, ",".join(kinds), dest], capture_output=True,
                            text=True, check=True)
    seconds, peak_kib = result.stdout.split()
    return {"kinds": ",".join(kinds), "dest": dest or "OUT/exports", "seconds": round(float(seconds), 1), "peak_rss_mib": int(peak_kib) // 1024,
            "summary": result.stderr.strip().splitlines()[1:]}


if __name__ == "__main__":
    out, dest = sys.argv[1], sys.argv[2]
    for kind in ALL:
        print(json.dumps(measure(out, (kind,))), flush=True)
    print(json.dumps(measure(out, ALL, dest)), flush=True)
    print(json.dumps({"rerun": measure(out, ALL)}), flush=True)
