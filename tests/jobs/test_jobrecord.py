import json

import pytest

from jobs.storage import layout
from jobs.storage.jobrecord import JobMismatch, ensure_job_record, fingerprint, project_version, read_job_record
from jobs.plan.order import Defaults
from jobs.storage import LocalStorage


def fp(model="random:tiny", revision=None, audio_format="wav", **defaults):
    return fingerprint(model, revision, audio_format, Defaults(**defaults).as_dict())


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "out")


def test_first_run_writes_the_record(storage):
    assert read_job_record(storage) is None
    record = ensure_job_record(storage, fp())
    assert storage.list() == [layout.JOB_RECORD]
    stored = json.loads(storage.read_bytes(layout.JOB_RECORD))
    assert stored == record == read_job_record(storage)
    assert stored["fingerprint"] == fp()
    assert stored["fingerprint"]["version"] == project_version()
    assert stored["fingerprint"]["defaults"] == {"max_audio_length_ms": 10_000, "seed": 0, "temperature": 0.9,
                                                 "top_k": 50}
    assert "created_at" in stored


def test_same_fingerprint_passes_and_keeps_the_record(storage):
    first = ensure_job_record(storage, fp(temperature=0.7))
    before = storage.read_bytes(layout.JOB_RECORD)
    again = ensure_job_record(storage, fp(temperature=0.7))
    assert again == first
    assert storage.read_bytes(layout.JOB_RECORD) == before


def test_defaults_order_does_not_matter(storage):
    ensure_job_record(storage, fingerprint("m", None, "wav", {"top_k": 5, "temperature": 0.5}))
    ensure_job_record(storage, fingerprint("m", None, "wav", {"temperature": 0.5, "top_k": 5}))


@pytest.mark.parametrize("changed, words", [
    (dict(model="random:small"), ["model", "random:tiny", "random:small"]),
    (dict(revision="abc123"), ["revision", "abc123"]),
    (dict(audio_format="flac"), ["audio_format", "wav", "flac"]),
    (dict(temperature=0.5), ["temperature", "0.9", "0.5"]),
    (dict(top_k=7), ["top_k", "50", "7"]),
    (dict(seed=3), ["seed"]),
    (dict(max_audio_length_ms=400), ["max_audio_length_ms", "400"]),
])
def test_a_different_fingerprint_is_refused_naming_the_change(storage, changed, words):
    ensure_job_record(storage, fp())
    before = storage.read_bytes(layout.JOB_RECORD)
    with pytest.raises(JobMismatch) as info:
        ensure_job_record(storage, fp(**changed))
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert storage.url in message and "--new-run" in message
    assert storage.read_bytes(layout.JOB_RECORD) == before


def test_mismatch_names_only_what_changed(storage):
    ensure_job_record(storage, fp())
    with pytest.raises(JobMismatch) as info:
        ensure_job_record(storage, fp(model="random:small"))
    message = str(info.value)
    assert "audio_format" not in message and "revision" not in message


def test_new_run_overwrites_the_record(storage):
    ensure_job_record(storage, fp())
    record = ensure_job_record(storage, fp(temperature=0.5, audio_format="flac"), new_run=True)
    assert record["fingerprint"] == fp(temperature=0.5, audio_format="flac")
    assert read_job_record(storage)["fingerprint"] == fp(temperature=0.5, audio_format="flac")
    # The new record is the one later runs must match.
    ensure_job_record(storage, fp(temperature=0.5, audio_format="flac"))
    with pytest.raises(JobMismatch):
        ensure_job_record(storage, fp())


def test_new_run_on_an_empty_out_just_writes_the_record(storage):
    record = ensure_job_record(storage, fp(), new_run=True)
    assert read_job_record(storage) == record


def test_weights_hash_is_recorded_then_enforced(storage):
    from jobs.storage.jobrecord import check_weights

    ensure_job_record(storage, fp())
    check_weights(storage, "abc123")
    assert read_job_record(storage)["weights_hash"] == "abc123"
    assert read_job_record(storage)["fingerprint"] == fp()  # the rest of the record is kept
    check_weights(storage, "abc123")  # same weights: a resume passes
    with pytest.raises(JobMismatch, match="other weights.*abc123.*def456"):
        check_weights(storage, "def456")
    # --new-run starts a fresh record, so the new weights are then recorded.
    ensure_job_record(storage, fp(), new_run=True)
    check_weights(storage, "def456")
    assert read_job_record(storage)["weights_hash"] == "def456"
