"""The streaming planner must plan exactly what plan(load_conversations(...)) plans, one chunk at a time."""
import dataclasses
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs.plan.spool
from jobs.manifests.manifest import load_conversations, validate_manifests
from jobs.plan.order import plan
from jobs.manifests.remote import Localized
from jobs.plan.spool import build_spool


def write(path, **columns) -> str:
    """One Parquet file (folders created); a column passed as a pa.Array keeps its Arrow type."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return str(path)


def spooled(paths, committed, folder, **kwargs):
    """The spool of valid manifests `paths`, and its work items in the order chunks() gives them."""
    report = validate_manifests([str(p) for p in paths], check_audio=False)
    assert report.ok, [str(p) for p in report.problems]
    spool = build_spool(report.files, committed, str(folder), **kwargs)
    return spool, [item for chunk in spool.chunks() for item in chunk]


def planned(paths, committed):
    """What the in-memory planner does with the same manifests."""
    return plan(load_conversations([str(p) for p in paths], check_audio=False), committed)


def assert_same_plan(paths, committed, folder, **kwargs):
    spool, items = spooled(paths, committed, folder, **kwargs)
    expected, complete = planned(paths, committed)
    assert [w.conversation_id for w in items] == [w.conversation_id for w in expected]
    assert items == expected  # same specs (every TurnSpec field) and the same committed sets
    assert spool.already_complete == complete
    assert spool.work_conversations == len(expected)
    assert spool.conversations == complete + len(expected)
    assert spool.turns_to_render == sum(len(w.remaining) for w in expected)
    return spool, items


def mixed_manifest(root) -> list[str]:
    """Two files in two folders. "alpha" is split across both, rows shuffled; given turns with relative paths
    (resolved against each file's own folder) and an s3:// URI; optional columns in one file and not the other,
    with integer temperatures, unsigned and dictionary-encoded columns."""
    first = write(
        root / "a" / "part-0.parquet",
        conversation_id=pa.array(["beta", "alpha", "beta", "only-given", "alpha", "beta", "tie-b"]).dictionary_encode(),
        turn_index=pa.array([2, 2, 0, 0, 0, 1, 0], pa.uint8()),
        speaker=pa.array([0, 0, 0, 1, 0, 1, 1], pa.int16()),
        text=["Beta two, the longest line here.", "Alpha two.", "Beta zero, given.", "Only a voice prompt.",
              "Alpha zero.", "Beta one.", "Tie."],
        audio=pa.array([None, None, "voices/b0.wav", "../shared/v.wav", None, None, None]),
        temperature=pa.array([None, 2, None, None, 1, None, None], pa.int32()),
        seed=pa.array([7, None, None, None, 2**63 - 1, None, None], pa.uint64()),
        pause_ms=pa.array([None, 300, None, None, None, 0, None], pa.int64()),
    )
    second = write(
        root / "b" / "sub" / "part-1.parquet",
        conversation_id=["gamma", "alpha", "delta", "gamma", "alpha", "delta", "delta", "tie-a"],
        turn_index=pa.array([1, 3, 2, 0, 1, 0, 1, 0], pa.int64()),
        speaker=pa.array([1, 1, 0, 0, 1, 0, 1, 0], pa.int64()),
        text=pa.array(["Gamma one.", "Alpha three, a bit longer.", "Delta two.", "Gamma zero.", "Alpha one.",
                       "Delta zero, from S3.", "Delta one.", "Tie."], pa.large_string()),
        audio=pa.array([None, None, None, None, None, "s3://bucket/voices/d0.wav", None, None]),
        top_k=pa.array([None, 5, None, 9, None, None, None, None], pa.int32()),
        max_audio_length_ms=pa.array([None, None, 2000, None, None, None, None, None], pa.int32()),
        temperature=pa.array([0.5, None, None, None, 1.25, None, None, None], pa.float32()),
    )
    return [first, second]


COMMITTED = {
    "alpha": {1},            # partial: turn 1 committed, 0, 2 and 3 left
    "gamma": {0, 1},         # complete
    "delta": {1},            # partial: turn 2 left, turn 0 given
    "ghost": {0, 1},         # not in the manifest: ignored
}


@pytest.mark.parametrize("chunk_conversations", [1, 2, 3, 100])
@pytest.mark.parametrize("committed", [{}, COMMITTED], ids=["fresh", "resumed"])
def test_chunks_equal_plan_of_loaded_conversations(tmp_path, chunk_conversations, committed):
    paths = mixed_manifest(tmp_path / "m")
    spool, items = assert_same_plan(paths, committed, tmp_path / "spool", chunk_conversations=chunk_conversations)
    chunks = list(spool.chunks())
    assert len(chunks) == spool.num_chunks == -(-len(items) // chunk_conversations)
    assert all(1 <= len(chunk) <= chunk_conversations for chunk in chunks)


def test_given_audio_is_resolved_against_each_files_folder(tmp_path):
    paths = mixed_manifest(tmp_path / "m")
    _, items = spooled(paths, {}, tmp_path / "spool")
    audio = {(w.conversation_id, t.turn_index): t.audio for w in items for t in w.spec.turns if t.is_given}
    assert audio == {("beta", 0): str(tmp_path / "m" / "a" / "voices" / "b0.wav"),
                     ("delta", 0): "s3://bucket/voices/d0.wav"}
    # "only-given" (its one turn is given) has nothing to render, so it is not spooled at all.


def test_relative_manifest_paths_resolve_audio_as_loading_does(tmp_path, monkeypatch):
    mixed_manifest(tmp_path / "m")
    monkeypatch.chdir(tmp_path / "m")
    assert_same_plan(["a/part-0.parquet", "b/sub/part-1.parquet"], {}, tmp_path / "spool")


def test_rows_keep_turnspec_types(tmp_path):
    paths = mixed_manifest(tmp_path / "m")
    _, items = spooled(paths, {}, tmp_path / "spool")
    alpha = next(w for w in items if w.conversation_id == "alpha")
    assert [t.turn_index for t in alpha.spec.turns] == [0, 1, 2, 3]
    assert [t.temperature for t in alpha.spec.turns] == [1.0, 1.25, 2.0, None]
    assert isinstance(alpha.spec.turns[0].temperature, float)
    assert alpha.spec.turns[0].seed == 2**63 - 1
    assert (alpha.spec.turns[3].top_k, alpha.spec.turns[2].pause_ms) == (5, 300)


def test_counts_and_complete_ids(tmp_path):
    paths = mixed_manifest(tmp_path / "m")
    spool, items = spooled(paths, COMMITTED, tmp_path / "spool")
    assert (spool.conversations, spool.already_complete, spool.work_conversations) == (7, 2, 5)
    assert list(spool.complete_ids()) == ["gamma", "only-given"]
    assert list(spool.complete_ids()) == ["gamma", "only-given"]  # readable again
    assert spool.turns_to_render == 3 + 2 + 1 + 1 + 1  # alpha 0,2,3; beta 1,2; delta 2; tie-a; tie-b
    assert [w.committed for w in items if w.conversation_id in COMMITTED] == [{1}, {1}]


def test_work_items_do_not_share_the_committed_sets(tmp_path):
    paths = mixed_manifest(tmp_path / "m")
    committed = {"alpha": {1}}
    _, items = spooled(paths, committed, tmp_path / "spool")
    next(w for w in items if w.conversation_id == "alpha").committed.add(2)
    assert committed == {"alpha": {1}}


def test_nothing_left_to_render(tmp_path):
    paths = mixed_manifest(tmp_path / "m")
    everything = {cid: set(range(4)) for cid in ("alpha", "beta", "gamma", "delta", "tie-a", "tie-b")}
    spool, items = assert_same_plan(paths, everything, tmp_path / "spool")
    assert items == [] and spool.num_chunks == 0 and spool.turns_to_render == 0
    assert list(spool.complete_ids()) == ["alpha", "beta", "delta", "gamma", "only-given", "tie-a", "tie-b"]
    assert [name for name in os.listdir(tmp_path / "spool") if name.startswith("run-")] == []


def test_empty_manifest(tmp_path):
    path = write(tmp_path / "empty.parquet", conversation_id=pa.array([], pa.string()),
                 turn_index=pa.array([], pa.int64()), speaker=pa.array([], pa.int64()), text=pa.array([], pa.string()))
    spool, items = assert_same_plan([path], {}, tmp_path / "spool")
    assert (spool.conversations, spool.num_chunks, items, list(spool.complete_ids())) == (0, 0, [], [])


def test_audio_name_maps_local_copies_back_to_s3(tmp_path):
    # As the runner maps the audio of manifests copied from S3: relative paths that resolved inside a copy.
    paths = mixed_manifest(tmp_path / "m")
    copies = Localized(paths, {os.path.realpath(tmp_path / "m" / "a"): "s3://bucket/manifests"})
    _, items = spooled(paths, {}, tmp_path / "spool", audio_name=copies.name)
    loaded = load_conversations(paths, check_audio=False)
    expected, _ = plan([dataclasses.replace(c, turns=[dataclasses.replace(t, audio=t.audio and copies.name(t.audio))
                                                      for t in c.turns]) for c in loaded], {})
    assert items == expected
    beta = next(w for w in items if w.conversation_id == "beta")
    assert beta.spec.turns[0].audio == "s3://bucket/manifests/voices/b0.wav"


def random_manifest(root, rng: random.Random, conversations=120, files=4) -> list[str]:
    """Conversations of 1-9 turns, rows spread over `files` files at random and shuffled, some turns given,
    optional columns in some files only."""
    rows = [(f"c{c:04d}", t, rng.random() < 0.15) for c in range(conversations) for t in range(rng.randint(1, 9))]
    rng.shuffle(rows)
    paths = []
    for f in range(files):
        mine = rows[f::files]
        columns = {"conversation_id": [r[0] for r in mine], "turn_index": pa.array([r[1] for r in mine], pa.int32()),
                   "speaker": pa.array([r[1] % 2 for r in mine], pa.int32()),
                   "text": ["word " * rng.randint(1, 12) + "é" * rng.randint(0, 3) for _ in mine],
                   "audio": pa.array([f"v/{r[0]}-{r[1]}.wav" if r[2] else None for r in mine], pa.string())}
        if f % 2:
            columns["seed"] = pa.array([rng.choice([None, rng.randrange(2**40)]) for _ in mine], pa.int64())
            columns["temperature"] = pa.array([rng.choice([None, 0.7]) for _ in mine], pa.float64())
        paths.append(write(root / f"f{f}" / "part.parquet", **columns))
    return paths


def random_committed(paths, rng: random.Random) -> dict[str, set[int]]:
    committed: dict[str, set[int]] = {}
    for path in paths:
        for cid, turn in zip(*pq.read_table(path, columns=["conversation_id", "turn_index"]).to_pydict().values()):
            if rng.random() < 0.5:
                committed.setdefault(cid, set()).add(turn)
    return committed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_manifests_split_over_runs_plan_the_same(tmp_path, seed):
    rng = random.Random(seed)
    paths = random_manifest(tmp_path / "m", rng)
    committed = random_committed(paths, rng)
    # A tiny buffer writes a run per record batch: every chunk is gathered from several runs.
    spool, items = assert_same_plan(paths, committed, tmp_path / "spool", chunk_conversations=7, buffer_bytes=1)
    assert len(spool._runs) == len(paths)
    assert 0 < spool.already_complete < spool.conversations


def test_one_run_whatever_the_number_of_chunks(tmp_path):
    paths = random_manifest(tmp_path / "m", random.Random(3))
    spool, _ = spooled(paths, {}, tmp_path / "spool", chunk_conversations=1)
    assert spool.num_chunks == spool.work_conversations > 100
    assert sorted(os.listdir(tmp_path / "spool")) == ["complete.arrow", "run-00000.arrow"]


def test_chunks_are_read_one_at_a_time(tmp_path, monkeypatch):
    paths = random_manifest(tmp_path / "m", random.Random(4))
    spool, _ = spooled(paths, {}, tmp_path / "spool", chunk_conversations=10, buffer_bytes=1)
    read = []
    real = jobs.plan.spool.Spool._read_chunk
    monkeypatch.setattr(jobs.plan.spool.Spool, "_read_chunk", lambda self, chunk, runs: read.append(chunk) or
                        real(self, chunk, runs))
    chunks = spool.chunks()
    first = next(chunks)
    assert read == [0] and len(first) == 10
    second = next(chunks)
    assert read == [0, 1] and len(second) == 10
    assert {w.conversation_id for w in first}.isdisjoint(w.conversation_id for w in second)
    chunks.close()


def test_run_readers_stay_under_the_open_file_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs.plan.spool, "MAX_OPEN_RUNS", 2)
    paths = random_manifest(tmp_path / "m", random.Random(5))
    assert_same_plan(paths, {}, tmp_path / "spool", chunk_conversations=5, buffer_bytes=1)


def test_chunk_size_must_be_positive(tmp_path):
    paths = mixed_manifest(tmp_path / "m")
    with pytest.raises(ValueError, match="chunk_conversations"):
        build_spool(paths, {}, str(tmp_path / "spool"), chunk_conversations=0)


def test_small_batches_and_frequent_merges_of_the_sums(tmp_path, monkeypatch):
    # Conversations split over many record batches within a file, and per-conversation sums merged as they go.
    monkeypatch.setattr(jobs.plan.spool, "BATCH_ROWS", 16)
    monkeypatch.setattr(jobs.plan.spool, "_MERGE_ROWS", 10)
    rng = random.Random(6)
    paths = random_manifest(tmp_path / "m", rng, files=2)
    spool, _ = assert_same_plan(paths, random_committed(paths, rng), tmp_path / "spool", chunk_conversations=4,
                                buffer_bytes=4096)
    assert len(spool._runs) > 2


def test_optional_columns_of_only_nulls_spool_as_job_defaults(tmp_path):
    """A column of only None (Arrow type null) spools as the nulls of its type, as loading reads it."""
    nulls = {name: pa.nulls(2) for name in ("audio", "temperature", "top_k", "seed")}
    path = write(str(tmp_path / "m" / "a.parquet"), conversation_id=["c", "c"], turn_index=[0, 1], speaker=[0, 1],
                 text=["hello", "there"], **nulls)
    assert_same_plan([path], {}, tmp_path / "spool")
