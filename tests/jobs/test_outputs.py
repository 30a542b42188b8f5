import hashlib
import io
import json
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from csm_worker.engine.requests import RenderedTurn
from jobs.storage import layout
from jobs.storage.outputs import (METADATA_SCHEMA, OutputWriter, TurnSet, codes_from_bytes, codes_to_bytes,
                          committed_turns)
from jobs.storage import LocalStorage, ObjectExists

SPF = 1920  # samples per frame at 24 kHz


def rendered(cid="conv", idx=0, frames=3, speaker=1, seed=1234, end_reason="max_length") -> RenderedTurn:
    rng = np.random.default_rng(idx)
    codes = rng.integers(0, 2051, size=(32, frames))
    codes[0, :1] = 2050  # the largest id the model can emit
    t = np.arange(frames * SPF) / 24_000
    audio = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    return RenderedTurn(cid, idx, speaker, f"turn {idx} of {cid}", codes=codes, seed=seed, end_reason=end_reason,
                        audio=audio)


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "out")


@pytest.fixture
def writer(storage):
    return OutputWriter(storage, "wav", "random:tiny")


# --- committing a turn -------------------------------------------------------------------------------------------

def test_commit_turn_writes_audio_codes_and_record(storage, writer):
    turn = rendered("kitchen", 2, frames=3)
    row = writer.commit_turn(turn, temperature=0.7, top_k=10, pause_ms=300)

    audio_key, codes_key = layout.audio_key("kitchen", 2, ".wav"), layout.codes_key("kitchen", 2)
    assert (row["audio_path"], row["codes_path"]) == (audio_key, codes_key)
    data = storage.read_bytes(audio_key)
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24_000 and samples.ndim == 1 and len(samples) == 3 * SPF
    np.testing.assert_allclose(samples, turn.audio, atol=1 / 32767 + 1e-6)  # 16-bit PCM
    np.testing.assert_array_equal(writer.load_codes("kitchen", 2), turn.codes)

    expected = {"conversation_id": "kitchen", "turn_index": 2, "speaker": 1, "text": "turn 2 of kitchen",
                "audio_path": audio_key, "codes_path": codes_key, "sample_rate": 24_000, "num_samples": 3 * SPF,
                "duration_s": 0.24, "num_frames": 3, "end_reason": "max_length", "seed": 1234, "temperature": 0.7,
                "top_k": 10, "pause_ms": 300, "model": "random:tiny", "sha256": hashlib.sha256(data).hexdigest()}
    assert {k: row[k] for k in expected} == pytest.approx(expected)
    assert set(row) == set(METADATA_SCHEMA.names)
    assert writer.read_commit("kitchen", 2) == row
    assert json.loads(storage.read_bytes(layout.commit_key("kitchen", 2))) == row
    assert (row["qc_status"], row["qc_failed"], row["qc_attempts"]) == ("unchecked", None, 1)


def test_a_turns_checks_are_recorded_in_its_row_and_commit(writer):
    from csm_worker.quality.checks import TurnQuality

    retried = rendered("c", 0)
    retried.quality, retried.attempt, retried.attempts = TurnQuality(("max_length", "too_slow")), 2, 3
    ok = rendered("c", 1)
    ok.quality = TurnQuality(())
    failed, passed = writer.commit_turn(retried, 0.9, 50, None), writer.commit_turn(ok, 0.9, 50, None)
    assert (failed["qc_status"], failed["qc_failed"], failed["qc_attempt"], failed["qc_attempts"]) == \
        ("fail", "max_length,too_slow", 2, 3)
    assert (passed["qc_status"], passed["qc_failed"], passed["qc_attempt"], passed["qc_attempts"]) == \
        ("pass", None, 1, 1)
    assert writer.read_commit("c", 0)["qc_failed"] == "max_length,too_slow"
    assert failed["seed"] == retried.seed  # the turn's own seed: the attempt says which one derived from it


def test_commit_record_is_written_last_and_create_only(storage, writer, monkeypatch):
    order = []

    def recording(method):
        original = getattr(storage, method)

        def record(key, data):
            order.append((method, key))
            return original(key, data)

        monkeypatch.setattr(storage, method, record)

    recording("write_bytes")
    recording("write_new")
    writer.commit_turn(rendered("c", 0), 0.9, 50, None)
    assert sorted(order[:-1]) == [("write_bytes", layout.audio_key("c", 0, ".wav")),
                                  ("write_bytes", layout.codes_key("c", 0))]
    assert order[-1] == ("write_new", layout.commit_key("c", 0))


def test_a_committed_turn_is_never_rendered_over(storage, writer):
    """A second render of a committed turn (a worker that outlived its lease) is refused before it writes
    anything: the committed audio and codes keep matching their record."""
    first = writer.commit_turn(rendered("c", 0, frames=3), 0.9, 50, None)
    before = {k: storage.read_bytes(k) for k in (first["audio_path"], first["codes_path"])}
    with pytest.raises(ObjectExists, match="turn 0 of c is already committed"):
        writer.commit_turn(rendered("c", 0, frames=5, seed=99), 0.9, 50, None)
    assert {k: storage.read_bytes(k) for k in before} == before
    assert writer.read_commit("c", 0) == first


def test_a_failed_write_leaves_the_turn_uncommitted(storage, writer, monkeypatch):
    write = storage.write_bytes

    def failing(key, data):
        if key.startswith("codes/"):
            raise OSError("disk full")
        write(key, data)

    monkeypatch.setattr(storage, "write_bytes", failing)
    with pytest.raises(OSError):
        writer.commit_turn(rendered("c", 0), 0.9, 50, None)
    assert committed_turns(storage) == {}
    assert not storage.exists(layout.commit_key("c", 0))


def test_commit_turn_as_flac(storage):
    writer = OutputWriter(storage, "flac", "m")
    turn = rendered("c", 1, frames=2)
    row = writer.commit_turn(turn, 0.9, 50, None)
    assert row["audio_path"] == layout.audio_key("c", 1, ".flac")
    data = storage.read_bytes(row["audio_path"])
    assert sf.info(io.BytesIO(data)).format == "FLAC"
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24_000 and len(samples) == row["num_samples"] == 2 * SPF
    assert row["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_a_turn_with_no_frames_commits_a_decodable_empty_file(storage, fmt):
    # libsndfile cannot write an empty FLAC, so an empty turn is stored as an empty WAV whatever the format.
    writer = OutputWriter(storage, fmt, "m")
    turn = RenderedTurn("c", 0, 0, "hm", codes=np.zeros((32, 0), dtype=np.int64), seed=1, end_reason="eos",
                        audio=np.zeros(0, dtype=np.float32))
    row = writer.commit_turn(turn, 0.9, 50, None)
    assert (row["num_frames"], row["num_samples"], row["duration_s"]) == (0, 0, 0.0)
    assert writer.load_codes("c", 0).shape == (32, 0)
    assert row["audio_path"] == layout.audio_key("c", 0, ".wav")
    samples, rate = sf.read(io.BytesIO(storage.read_bytes(row["audio_path"])), dtype="float32")
    assert (len(samples), rate) == (0, 24_000)


# --- reading back what is committed ------------------------------------------------------------------------------

def test_turn_sets_behave_as_frozen_sets_of_turn_indices():
    t = TurnSet([12, 0, 3, 3])
    assert t == {0, 3, 12} and {0, 3, 12} == t and t != {0, 3}
    assert list(t) == [0, 3, 12] and len(t) == 3 and bool(t) and not TurnSet()
    assert 3 in t and 4 not in t and -1 not in t and 13 not in t and "3" not in t
    assert set(t) - {3} == {0, 12} and {"a": t} == {"a": {0, 3, 12}}
    assert pickle.loads(pickle.dumps(t)) == t  # work items travel to Ray actors


def test_committed_turns_reads_the_commit_records(storage, writer):
    assert committed_turns(storage) == {}
    for cid, idx in [("a", 0), ("a", 1), ("b", 0), ("a", 12)]:
        writer.commit_turn(rendered(cid, idx, frames=1), 0.9, 50, None)
    # Audio and codes alone (a crash before the commit record) do not count; nor do stray files in commits/.
    storage.write_bytes(layout.audio_key("b", 1, ".wav"), b"partial")
    storage.write_bytes(layout.codes_key("b", 1), b"partial")
    storage.write_bytes("commits/b/notes.txt", b"")
    storage.write_bytes("commits/b/x.json", b"{}")
    assert committed_turns(storage) == {"a": {0, 1, 12}, "b": {0}}


# --- metadata ----------------------------------------------------------------------------------------------------

def test_write_metadata_round_trips_with_the_schema(storage, writer):
    rows = [writer.commit_turn(rendered("c", i, frames=i + 1), 0.9, 50, None if i else 250) for i in (2, 0, 1)]
    writer.write_metadata("c", rows)
    table = pq.read_table(io.BytesIO(storage.read_bytes(layout.metadata_key("c"))))
    assert table.schema.remove_metadata() == METADATA_SCHEMA
    got = table.to_pylist()
    assert [r["turn_index"] for r in got] == [0, 1, 2]  # sorted by turn
    assert got == sorted(rows, key=lambda r: r["turn_index"])
    assert got[0]["pause_ms"] == 250 and got[1]["pause_ms"] is None


def test_write_metadata_from_commit_records_matches_the_returned_rows(storage, writer):
    rows = [writer.commit_turn(rendered("c", i), 0.9, 50, None) for i in range(2)]
    writer.write_metadata("c", [writer.read_commit("c", i) for i in range(2)])
    got = pq.read_table(io.BytesIO(storage.read_bytes(layout.metadata_key("c")))).to_pylist()
    assert got == rows


def test_write_metadata_replaces_the_whole_file(storage, writer):
    rows = [writer.commit_turn(rendered("c", i, frames=1), 0.9, 50, None) for i in range(3)]
    writer.write_metadata("c", rows)
    writer.write_metadata("c", rows[:1])
    got = pq.read_table(io.BytesIO(storage.read_bytes(layout.metadata_key("c")))).to_pylist()
    assert [r["turn_index"] for r in got] == [0]
    assert storage.list("metadata/") == [layout.metadata_key("c")]


# --- codes -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [0, 1, 17])
def test_codes_round_trip(frames):
    rng = np.random.default_rng(frames)
    codes = rng.integers(0, 2051, size=(32, frames))
    if frames:
        codes[0, 0], codes[-1, -1] = 0, 2050
    data = codes_to_bytes(codes)
    back = codes_from_bytes(data)
    assert back.shape == (32, frames)
    np.testing.assert_array_equal(back, codes)
    assert np.issubdtype(back.dtype, np.integer)
    # The stored form is a plain .npy that numpy loads without pickle (int16 per the layout).
    stored = np.load(io.BytesIO(data), allow_pickle=False)
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, codes)


# --- failures ----------------------------------------------------------------------------------------------------

def test_failure_record_is_written_and_cleared(storage, writer):
    writer.write_failure("c", "AudioError", "audio file 'x.wav' does not exist", attempts=1, turns_committed=2)
    record = json.loads(storage.read_bytes(layout.failure_key("c")))
    assert {k: record[k] for k in ("conversation_id", "error_type", "message", "attempts", "turns_committed")} == {
        "conversation_id": "c", "error_type": "AudioError", "message": "audio file 'x.wav' does not exist",
        "attempts": 1, "turns_committed": 2}
    assert "failed_at" in record
    writer.clear_failure("c")
    assert not storage.exists(layout.failure_key("c"))
    writer.clear_failure("c")  # clearing an absent record is fine
    writer.clear_failure("never-failed")
    assert storage.list("failures/") == []
