"""Re-render passes: `run --rerender-failed` renders again, as a new and recorded pass, the turns of a finished job
that failed the quality checks, and in their conversations every turn after them (those heard the failed turn as
their context, so they are rendered again after its new version).

Pass 1 is the job's first render. A pass n > 1:
- is planned from the finished conversations' metadata (qc_status as the render, or a later `csm-render qc`, left
  it) and recorded in OUT/passes/<n>.json (create-only) before any of its turns renders: which conversations, from
  which turn, and which turns failed which checks;
- renders each turn it covers with a seed derived from the turn's own and n (pass_seed): sampling the same context
  with the same seed would give the same failure, and a resumed pass draws the same seeds;
- writes new objects beside the earlier passes' (<turn>.p<n>: audio, codes, commit record; jobs/storage/layout.py),
  never replacing one, so a crash anywhere leaves every turn one whole current record: its latest pass's;
- rewrites a conversation's metadata once its covered turns are committed, from each turn's latest record;
- is closed by OUT/passes/<n>.done.json once every conversation it covers is rendered. Until then every run of the
  job, with the flag or without, resumes it: one pass is open at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import pyarrow.parquet as pq

from jobs.storage import Storage, layout
from jobs.storage.outputs import committed_turns

READERS = 8  # metadata files read at once: on S3 each is a round trip


@dataclass(frozen=True)
class RenderPass:
    number: int
    turns: Mapping[str, tuple[int, ...]]  # conversation -> the turns this pass renders (its failed one onwards)
    failed: Mapping[str, Mapping[int, str]]  # conversation -> turn -> the checks it failed, when planned

    def covers(self, conversation_id: str, turn_index: int) -> bool:
        turns = self.turns.get(conversation_id)
        return bool(turns) and turn_index >= turns[0]

    def counts(self, key: layout.CommitKey) -> bool:
        """Whether a commit record stands in this pass: a covered turn's only when this pass wrote it."""
        return key.render_pass == self.number or not self.covers(key.conversation_id, key.turn_index)

    def pass_of(self, conversation_id: str, turn_index: int) -> int:
        """The pass a turn rendered now is committed as."""
        return self.number if self.covers(conversation_id, turn_index) else 1

    def describe(self) -> str:
        turns = sum(len(t) for t in self.turns.values())
        return (f"re-render pass {self.number}: {len(self.turns)} conversations from their first failed turn "
                f"({sum(len(f) for f in self.failed.values())} failed turns, {turns} turns to render again)")

    def record(self) -> dict:
        return {"pass": self.number, "reason": "rerender-failed", "started_at": layout.timestamp(),
                "conversations": {cid: {"turns": list(turns), "failed": {str(i): c for i, c in
                                                                          self.failed[cid].items()}}
                                  for cid, turns in sorted(self.turns.items())}}

    @classmethod
    def from_record(cls, record: dict) -> "RenderPass":
        conversations = record["conversations"]
        return cls(record["pass"], {cid: tuple(c["turns"]) for cid, c in conversations.items()},
                   {cid: {int(i): checks for i, checks in c["failed"].items()} for cid, c in conversations.items()})


def pass_seed(seed: int, render_pass: int) -> int:
    """The seed a turn renders with in pass `render_pass`: its own in pass 1, then a hash of (seed, pass) in
    [0, 2**63) (its attempts derive from that, as in any pass: csm_worker/engine/retries.attempt_seed)."""
    if render_pass <= 1:
        return int(seed)
    digest = hashlib.blake2b(f"csm-render pass {int(seed)} {int(render_pass)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def open_pass(storage: Storage, numbers: list[int] | None = None) -> RenderPass | None:
    """The latest pass, if it is not done yet (`numbers`: the passes' numbers, when already listed)."""
    numbers = _pass_numbers(storage) if numbers is None else numbers
    if not numbers or storage.exists(layout.pass_done_key(numbers[-1])):
        return None
    return RenderPass.from_record(json.loads(storage.read_bytes(layout.pass_key(numbers[-1]))))


def _pass_numbers(storage: Storage) -> list[int]:
    """The numbers of the passes OUT records, in order (one listing of passes/)."""
    return sorted(n for n in map(layout.parse_pass_key, storage.list(layout.PASSES)) if n is not None)


def begin_pass(storage: Storage, rerender_failed: bool) -> tuple[RenderPass | None, str]:
    """The pass this run renders, and a line saying so: the open one (resumed, whatever the flag), else with
    `rerender_failed` a new one over the finished conversations' failed turns (None when no turn failed)."""
    numbers = _pass_numbers(storage)
    current = open_pass(storage, numbers)
    if current is not None:
        return current, f"resuming {current.describe()}"
    if not rerender_failed:
        return None, ""
    turns, failed = flagged_turns(storage)
    if not failed:
        return None, "re-render: no finished turn failed the quality checks; nothing to render again"
    new = RenderPass(max(numbers, default=1) + 1, turns, failed)
    storage.write_new(layout.pass_key(new.number), json.dumps(new.record(), indent=1, sort_keys=True).encode())
    return new, new.describe()


def finish_pass(storage: Storage, current: RenderPass) -> list[str]:
    """Close the pass if every turn it covers is committed in it; returns the conversations still short of that
    (none: closed)."""
    short = [cid for cid, turns in sorted(current.turns.items())
             if not set(turns) <= set(committed_turns(storage, cid, current).get(cid, ()))]
    if not short:
        record = {"pass": current.number, "finished_at": layout.timestamp()}
        storage.write_new(layout.pass_done_key(current.number), json.dumps(record, sort_keys=True).encode())
    return short


def flagged_turns(storage: Storage) -> tuple[dict[str, tuple[int, ...]], dict[str, dict[int, str]]]:
    """What a new pass renders, from the finished conversations' metadata: for each conversation with a turn that
    failed QC, its turns from the first failed one on, and the failed turns' checks."""
    failures = {k[len("failures/"):-len(".json")] for k in storage.list("failures/")}
    keys = [k for k in storage.iter_list("metadata/") if k.endswith(".parquet")
            and k[len("metadata/"):-len(".parquet")] not in failures]  # a failed conversation is resumed instead
    turns, failed = {}, {}
    with ThreadPoolExecutor(READERS) as pool:
        for cid, rows in pool.map(partial(_read_columns, storage, ("turn_index", "qc_status", "qc_failed")), keys):
            bad = {r["turn_index"]: r["qc_failed"] or "" for r in rows if r["qc_status"] == "fail"}
            if bad:
                failed[cid] = bad
                turns[cid] = tuple(sorted(r["turn_index"] for r in rows if r["turn_index"] >= min(bad)))
    return turns, failed


def _read_columns(storage: Storage, columns: tuple[str, ...], key: str) -> tuple[str, list[dict]]:
    data, cid = storage.read_bytes(key), key[len("metadata/"):-len(".parquet")]
    if not set(columns) <= set(pq.ParquetFile(io.BytesIO(data)).schema_arrow.names):
        return cid, []  # written before the quality checks: nothing to judge by
    return cid, pq.read_table(io.BytesIO(data), columns=list(columns)).to_pylist()


def pass_history(storage: Storage) -> list[str]:
    """A line per pass after the first, for `status`."""
    lines = []
    for key in sorted(storage.list(layout.PASSES)):
        number = layout.parse_pass_key(key)
        if number is not None:
            done = storage.exists(layout.pass_done_key(number))
            described = RenderPass.from_record(json.loads(storage.read_bytes(key))).describe()
            lines.append(f"{described}: {'done' if done else 'open (the next run resumes it)'}")
    return lines
