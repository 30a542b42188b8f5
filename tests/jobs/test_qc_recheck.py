"""`csm-render qc OUT`: a finished job's turns checked again with the current settings, no rendering; the results
land in the metadata (status and export follow), the commit records keep what the render found."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from jobs.storage import layout
from jobs.storage.run_lock import RunLock

from .export.helpers import local_job

# Short tones (0.16-0.24 s) under texts of ~25 letters: far too fast for their letters, so the default checks fail
# every turn (tests/jobs/export/helpers.py writes them unchecked, as before the checks existed).
JOB = {"a": [(2, None), (3, None)], "b": [(2, None)]}


def metadata(storage, cid) -> list[dict]:
    return pq.read_table(io.BytesIO(storage.read_bytes(layout.metadata_key(cid)))).to_pylist()


@pytest.fixture
def job(tmp_path):
    storage, rows = local_job(tmp_path, JOB)
    assert {r["qc_status"] for rs in rows.values() for r in rs} == {"unchecked"}
    return storage


def test_qc_records_the_checks_in_the_metadata_and_leaves_the_commits(job, csm_render):
    result = csm_render("qc", job.url)
    assert result.returncode == 1, result.stderr
    assert "checked 3 turns of 2 finished conversations: 0 passed, 3 failed; 3 changed" in result.stdout
    assert "QC a/0: too_fast" in result.stdout
    for cid in JOB:
        assert {(r["qc_status"], r["qc_failed"]) for r in metadata(job, cid)} == {("fail", "too_fast")}
        assert json.loads(job.read_bytes(layout.commit_key(cid, 0)))["qc_status"] == "unchecked"

    status = csm_render("status", job.url)
    assert ("quality: 3 of 3 turns failed the checks "
            "(`run --rerender-failed` renders them again); the worst:") in status.stdout

    again = csm_render("qc", job.url)  # nothing new to record: no file is rewritten
    before = job.read_bytes(layout.metadata_key("a"))
    assert "0 changed" in again.stdout and job.read_bytes(layout.metadata_key("a")) == before


def test_qc_with_other_thresholds_changes_the_results(job, csm_render):
    assert csm_render("qc", job.url).returncode == 1
    result = csm_render("qc", job.url, "--qc-threshold", "rate_max=1000")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed, 0 failed; 3 changed" in result.stdout
    assert {r["qc_status"] for r in metadata(job, "a")} == {"pass"}


def test_qc_waits_for_a_run_that_holds_out_and_writes_nothing(job, csm_render):
    before = job.read_bytes(layout.metadata_key("a"))
    with RunLock(job):
        result = csm_render("qc", job.url, "--lock-wait-s", 0)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert job.read_bytes(layout.metadata_key("a")) == before


def test_qc_refuses_a_bad_threshold(job, csm_render):
    result = csm_render("qc", job.url, "--qc-threshold", "voiced=1")
    assert result.returncode == 2 and "min_voiced_fraction" in result.stderr
