"""Where each output lives under OUT. Every name is deterministic, so a re-run writes the same keys.

    OUT/job.json                                  job record: configuration fingerprint
    OUT/audio/<conversation_id>/<turn>.wav        rendered audio, 24 kHz mono (or .flac)
    OUT/codes/<conversation_id>/<turn>.npy        Mimi codes [32, frames] int16
    OUT/commits/<conversation_id>/<turn>.json     commit record, written last: the turn is done iff it exists
    OUT/metadata/<conversation_id>.parquet        one row per committed turn of a finished (or failed) conversation
    OUT/failures/<conversation_id>.json           why a conversation failed (removed when it later succeeds)
    OUT/locks/<generation>.json                   the lease of the run writing OUT (jobs/storage/run_lock.py)
    OUT/exports/<kind>/...                        derived outputs of `csm-render export` (jobs/export/)
"""

from __future__ import annotations

import time

JOB_RECORD = "job.json"
LOCKS = "locks/"
FOLDERS = ("audio/", "codes/", "commits/", "metadata/", "failures/", LOCKS)  # all a job writes, but JOB_RECORD
# Not in FOLDERS: `csm-render export` writes here without OUT's lease (it only reads the job), so a run starting
# meanwhile must not delete its temporary files; --new-run clears it with the rest (runner.clear_previous_run).
EXPORTS = "exports/"


def timestamp() -> str:
    """Now, in UTC, as every record under OUT writes it (ISO 8601, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _turn(turn_index: int) -> str:
    return f"{turn_index:06d}"


def audio_key(conversation_id: str, turn_index: int, ext: str) -> str:
    return f"audio/{conversation_id}/{_turn(turn_index)}{ext}"


def codes_key(conversation_id: str, turn_index: int) -> str:
    return f"codes/{conversation_id}/{_turn(turn_index)}.npy"


def commit_key(conversation_id: str, turn_index: int) -> str:
    return f"commits/{conversation_id}/{_turn(turn_index)}.json"


def metadata_key(conversation_id: str) -> str:
    return f"metadata/{conversation_id}.parquet"


def failure_key(conversation_id: str) -> str:
    return f"failures/{conversation_id}.json"


def parse_commit_key(key: str) -> tuple[str, int] | None:
    """'commits/<conv>/<turn>.json' -> (conv, turn); anything else -> None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "commits" or not parts[2].endswith(".json"):
        return None
    stem = parts[2][: -len(".json")]
    return (parts[1], int(stem)) if stem.isdigit() else None


def lock_key(generation: int) -> str:
    return f"{LOCKS}{generation:09d}.json"  # zero-padded: the listing's order is the generations' order


def parse_lock_key(key: str) -> int | None:
    """'locks/<generation>.json' -> generation; anything else -> None."""
    stem = key[len(LOCKS):-len(".json")] if key.startswith(LOCKS) and key.endswith(".json") else ""
    return int(stem) if stem.isdigit() else None
