"""Where an export goes: OUT/exports/ by default, or DEST, which may not be inside a job's own folders (this
job's audio/, metadata/, ... or another job's OUT): export only ever adds files of its own."""

from __future__ import annotations

import os

from jobs.storage import Storage, layout, open_storage

from jobs.export.options import ExportRequestError


def open_dest(out: Storage, dest: str | None, s3_endpoint_url: str | None = None) -> Storage:
    """The Storage exports are written to; ExportRequestError (nothing written) for a DEST inside a job."""
    if dest is None:
        return open_storage(f"{out.url}/{layout.EXPORTS.rstrip('/')}", s3_endpoint_url)
    try:
        target = open_storage(dest, s3_endpoint_url)
    except ValueError as e:
        raise ExportRequestError(f"--dest {dest}: {e}") from None
    own_exports = f"{out.url}/{layout.EXPORTS.rstrip('/')}"
    for folder in _ancestors(target.url):
        if not _is_job(folder, s3_endpoint_url):
            continue
        if folder == out.url and _within(target.url, own_exports):
            break  # this job's exports folder (or a folder below it): fine
        which = "this job's" if folder == out.url else "another job's"
        raise ExportRequestError(f"--dest {dest} is inside {which} output {folder} (it holds {layout.JOB_RECORD}): "
                                 f"give a folder outside any job's OUT, or leave --dest out to write to "
                                 f"{own_exports}")
    return target


def _within(url: str, folder: str) -> bool:
    return url == folder or url.startswith(folder + "/")


def _ancestors(url: str) -> list[str]:
    """The folder itself, then each one above it (up to the bucket, or the file system's root)."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        parts = [p for p in prefix.split("/") if p]
        return [f"s3://{bucket}/{'/'.join(parts[:n])}".rstrip("/") for n in range(len(parts), -1, -1)]
    out, path = [], os.path.abspath(url)
    while True:
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            return out
        path = parent


def _is_job(folder: str, s3_endpoint_url: str | None) -> bool:
    if folder.startswith("s3://"):
        return open_storage(folder, s3_endpoint_url).exists(layout.JOB_RECORD)
    return os.path.isfile(os.path.join(folder, layout.JOB_RECORD))
