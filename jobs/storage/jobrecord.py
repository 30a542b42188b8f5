"""The job record in OUT: the configuration fingerprint that a re-run on the same OUT must match.

A re-run with another model or other sampling defaults would mix two configurations in one dataset, so it is
refused unless the user asks for a new run explicitly (`--new-run`), which starts the record afresh.
"""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata

from jobs.storage import layout
from jobs.storage import Storage


class JobMismatch(Exception):
    pass


def project_version() -> str:
    try:
        return importlib_metadata.version("csm-render")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def fingerprint(model: str, revision: str | None, audio_format: str, defaults: dict,
                voices_hash: str | None = None) -> dict:
    fp = {
        "model": model,
        "revision": revision,
        "audio_format": audio_format,
        "defaults": dict(sorted(defaults.items())),
        "version": project_version(),
    }
    if voices_hash is not None:  # only with --voices, so records written before casts existed still match
        fp["voices"] = voices_hash
    return fp


def check_job_record(storage: Storage, fp: dict) -> dict | None:
    """The job record OUT holds (None: none yet); JobMismatch when its fingerprint is not `fp`. Writes nothing."""
    record = read_job_record(storage)
    if record is None:
        return None
    diffs = _differences(record.get("fingerprint", {}), fp)
    if diffs:
        raise JobMismatch(
            f"{storage.url} holds a job with another configuration ({'; '.join(diffs)}). Use the same settings "
            "to resume it, another --out, or --new-run to discard it and render everything with the new settings"
        )
    return record


def ensure_job_record(storage: Storage, fp: dict, new_run: bool = False, cast: list[dict] | None = None) -> dict:
    """Write the record on the first run; on a re-run check that the fingerprint matches. `cast`: the voices
    (speaker, name, hash), kept for `status`."""
    record = None if new_run else check_job_record(storage, fp)
    if record is not None:
        return record
    record = {"fingerprint": fp, "created_at": layout.timestamp()}
    if cast:
        record["cast"] = cast
    storage.write_bytes(layout.JOB_RECORD, json.dumps(record, indent=2, sort_keys=True).encode())
    return record


def check_weights(storage: Storage, weights_hash: str) -> None:
    """The weights themselves are part of the fingerprint: a local --model folder can change under the same name.
    Workers report their hash once loaded; the first run records it, later runs must match it."""
    record = read_job_record(storage) or {}
    known = record.get("weights_hash")
    if known is None:
        record["weights_hash"] = weights_hash
        storage.write_bytes(layout.JOB_RECORD, json.dumps(record, indent=2, sort_keys=True).encode())
    elif known != weights_hash:
        raise JobMismatch(
            f"{storage.url} was rendered with other weights (hash {known}, now {weights_hash}) under the same "
            "--model name. Use the original weights, another --out, or --new-run to render everything again"
        )


def record_watermark(storage: Storage, watermark: dict) -> None:
    """What marks this run's turns (jobs.watermark_options: on/off, key, weights and their sha256), recorded when
    the run starts, before its workers (written only when it changed). Not part of the fingerprint: a later run may change it, and each turn's metadata says
    what marked it; the record keeps the latest run's."""
    record = read_job_record(storage) or {}
    if record.get("watermark") != watermark:
        record["watermark"] = watermark
        storage.write_bytes(layout.JOB_RECORD, json.dumps(record, indent=2, sort_keys=True).encode())


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'defaults.temperature: 0.9 -> 0.5' for each field that differs, nested dicts flattened."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def read_job_record(storage: Storage) -> dict | None:
    if not storage.exists(layout.JOB_RECORD):
        return None
    return json.loads(storage.read_bytes(layout.JOB_RECORD))
