"""Peak memory and time of reading a resumed job's commit records: 40,000 conversations x 100 turns.

`python docs/bench/resume_listing.py before` runs the previous algorithm (whole listing, a set per conversation),
`... after` runs jobs.storage.outputs.committed_turns (streamed listing, TurnSet). Figures in docs/BENCHMARKS.md.
"""
import resource
import sys
import time
from collections import defaultdict

from jobs.storage import layout
from jobs.storage.outputs import committed_turns

CONVS, TURNS = 40_000, 100


class Synthetic:
    """The keys S3Storage.iter_list would yield for such a job, without the network."""

    def iter_list(self, prefix):
        return (layout.commit_key(f"conv-{i:06d}", j) for i in range(CONVS) for j in range(TURNS))

    def list(self, prefix):
        return sorted(self.iter_list(prefix))


def before(storage):
    done = defaultdict(set)
    for key in storage.list("commits/"):
        cid, turn = layout.parse_commit_key(key)
        done[cid].add(turn)
    return done


base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = (before if sys.argv[1] == "before" else committed_turns)(Synthetic())
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(f"{sys.argv[1]}: {sum(len(v) for v in result.values()):,} turns, peak +{peak / 1024:.0f} MiB, {elapsed:.1f} s")
