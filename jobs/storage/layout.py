"""Where each output lives under OUT. Every name is deterministic, so a re-run writes the same keys.

    OUT/job.json                                  job record: configuration fingerprint
    OUT/audio/<conversation_id>/<turn>.wav        rendered audio, 24 kHz mono (or .flac)
    OUT/codes/<conversation_id>/<turn>.npy        Mimi codes [32, frames] int16
    OUT/commits/<conversation_id>/<turn>.json     commit record, written last: the turn is done iff it exists
    OUT/passes/<pass>.json, <pass>.done.json      a re-render pass (`run --rerender-failed`, jobs/plan/passes.py):
                                                  its plan, then that it finished; a turn it rendered has
                                                  <turn>.p<pass> for <turn> in the three keys above
    OUT/metadata/<conversation_id>.parquet        one row per committed turn of a finished (or failed) conversation
    OUT/failures/<conversation_id>.json           why a conversation failed (removed when it later succeeds)
    OUT/locks/<generation>.json                   the lease of the run writing OUT (jobs/storage/run_lock.py)
    OUT/exports/<kind>/...                        derived outputs of `csm-render export` (jobs/export/)
"""

from __future__ import annotations

import time
from typing import NamedTuple

JOB_RECORD = "job.json"
LOCKS = "locks/"
PASSES = "passes/"
FOLDERS = ("audio/", "codes/", "commits/", "metadata/", "failures/", PASSES, LOCKS)  # all a job writes, but JOB_RECORD
# Not in FOLDERS: `csm-render export` writes here without OUT's lease (it only reads the job), so a run starting
# meanwhile must not delete its temporary files; --new-run clears it with the rest (runner.clear_previous_run).
EXPORTS = "exports/"


def timestamp() -> str:
    """Now, in UTC, as every record under OUT writes it (ISO 8601, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _turn(turn_index: int, render_pass: int = 1) -> str:
    # The first render's names stay as they always were; a later pass's are new objects beside them, so no
    # record or file of an earlier pass is ever replaced.
    return f"{turn_index:06d}" + (f".p{render_pass}" if render_pass > 1 else "")


def audio_key(conversation_id: str, turn_index: int, ext: str, render_pass: int = 1) -> str:
    return f"audio/{conversation_id}/{_turn(turn_index, render_pass)}{ext}"


def codes_key(conversation_id: str, turn_index: int, render_pass: int = 1) -> str:
    return f"codes/{conversation_id}/{_turn(turn_index, render_pass)}.npy"


def commit_key(conversation_id: str, turn_index: int, render_pass: int = 1) -> str:
    return f"commits/{conversation_id}/{_turn(turn_index, render_pass)}.json"


def pass_key(render_pass: int) -> str:
    return f"{PASSES}{render_pass:06d}.json"


def pass_done_key(render_pass: int) -> str:
    return f"{PASSES}{render_pass:06d}.done.json"


def parse_pass_key(key: str) -> int | None:
    """'passes/<pass>.json' -> pass; anything else (a done marker included) -> None."""
    stem = key[len(PASSES):-len(".json")] if key.startswith(PASSES) and key.endswith(".json") else ""
    return int(stem) if stem.isdigit() else None


def metadata_key(conversation_id: str) -> str:
    return f"metadata/{conversation_id}.parquet"


def failure_key(conversation_id: str) -> str:
    return f"failures/{conversation_id}.json"


class CommitKey(NamedTuple):
    conversation_id: str
    turn_index: int
    render_pass: int


def parse_commit(key: str) -> CommitKey | None:
    """'commits/<conv>/<turn>.json' -> (conv, turn, 1); '.../<turn>.p<pass>.json' -> (conv, turn, pass); anything
    else -> None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "commits" or not parts[2].endswith(".json"):
        return None
    turn, marked, render_pass = parts[2][: -len(".json")].partition(".p")
    if not turn.isdigit():
        return None
    if not marked:
        return CommitKey(parts[1], int(turn), 1)
    later = render_pass.isdigit() and int(render_pass) > 1  # pass 1's names carry no mark
    return CommitKey(parts[1], int(turn), int(render_pass)) if later else None


def parse_commit_key(key: str) -> tuple[str, int] | None:
    """'commits/<conv>/<turn>[.p<pass>].json' -> (conv, turn); anything else -> None."""
    parsed = parse_commit(key)
    return parsed[:2] if parsed else None


def lock_key(generation: int) -> str:
    return f"{LOCKS}{generation:09d}.json"  # zero-padded: the listing's order is the generations' order


def parse_lock_key(key: str) -> int | None:
    """'locks/<generation>.json' -> generation; anything else -> None."""
    stem = key[len(LOCKS):-len(".json")] if key.startswith(LOCKS) and key.endswith(".json") else ""
    return int(stem) if stem.isdigit() else None
