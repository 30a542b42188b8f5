"""`--voices`: a cast read and validated like a manifest, applied to every conversation that uses its speakers
(a real RenderWorker on random:tiny, no Ray), hashed into the job fingerprint, recorded in the metadata."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import soundfile
from click.testing import CliRunner

from jobs.cli import main
from jobs.cluster.feeder import Feeder
from jobs.cluster.worker import RenderWorker
from jobs.manifests.manifest import ConversationSpec, ManifestError, TurnSpec
from jobs.manifests.voices import check_window, read_cast, speaker_pairs
from jobs.plan.order import Defaults, WorkItem
from jobs.storage import LocalStorage, layout
from jobs.storage.jobrecord import JobMismatch, check_job_record, ensure_job_record, fingerprint

from .test_worker import FeederFeed, render_all


def tone(path, seconds=0.4, hz=220.0, rate=16_000):
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * hz * t), rate, subtype="PCM_16")
    return path.name


def write_cast(folder, rows=None, **columns) -> str:
    """A cast file in `folder`, with two recordings beside it: speaker 0 "Ann" (two prompts), speaker 1 "Bo"."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b, c = (tone(folder / f"{n}.wav", hz=hz) for n, hz in (("a", 200.0), ("b", 300.0), ("c", 400.0)))
    table = columns or {"speaker": pa.array([0, 1, 0], pa.int32()), "name": ["Ann", "Bo", "Ann"],
                        "text": ["First words.", "Hi, Bo here.", "More words."], "audio": [a, b, c],
                        "order": pa.array([1, 0, 0], pa.int32())}
    path = folder / "cast.parquet"
    pq.write_table(pa.table(table), path)
    return str(path)


def test_a_cast_is_read_in_speaker_and_order_order_with_stable_hashes(tmp_path):
    path = write_cast(tmp_path / "cast")
    cast = read_cast(path)
    assert sorted(cast.voices) == [0, 1]
    ann = cast.voices[0]
    assert ann.name == "Ann" and [p.text for p in ann.prompts] == ["More words.", "First words."]  # order 0, 1
    assert ann.prompts[0].audio == str(tmp_path / "cast" / "c.wav") and ann.prompts[0].duration_ms == 400
    assert read_cast(path).hash == cast.hash and len({cast.hash, ann.hash, cast.voices[1].hash}) == 3
    tone(tmp_path / "cast" / "b.wav", hz=310.0)  # Bo's recording changes: Bo's hash and the cast's, not Ann's
    again = read_cast(path)
    assert again.voices[0].hash == ann.hash and again.voices[1].hash != cast.voices[1].hash
    assert again.hash != cast.hash


@pytest.mark.parametrize("change, column, phrase", [
    (lambda t: t.pop("audio"), "audio", "missing required column audio"),
    (lambda t: t.update(speaker=["0", "1", "0"]), "speaker", "use an integer type"),
    (lambda t: t.update(speaker=pa.array([0, -1, 0], pa.int32())), "speaker", "speaker -1 is not a speaker id"),
    (lambda t: t.update(text=["a", " ", "c"]), "text", "text is empty"),
    (lambda t: t.update(audio=["a.wav", "nope.wav", "c.wav"]), "audio", "audio file not found"),
    (lambda t: t.update(order=pa.array([0, 0, 0], pa.int32())), "order", "two prompts of order 0"),
    (lambda t: t.update(name=["Ann", "Bo", "Anne"]), "name", "named both 'Ann' and 'Anne'"),
])
def test_bad_casts_name_file_row_and_column_and_exit_2(tmp_path, change, column, phrase):
    folder = tmp_path / "cast"
    write_cast(folder)
    table = pq.read_table(folder / "cast.parquet").to_pydict()
    table = {k: (pa.array(v, pa.int32()) if k in ("speaker", "order") else v) for k, v in table.items()}
    change(table)
    pq.write_table(pa.table(table), folder / "cast.parquet")
    with pytest.raises(ManifestError) as caught:
        read_cast(str(folder / "cast.parquet"))
    [problem] = caught.value.problems
    assert problem.file == str(folder / "cast.parquet") and problem.column == column and phrase in problem.message
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"conversation_id": ["c"], "turn_index": [0], "speaker": [0], "text": ["x"]}), manifest)
    result = CliRunner().invoke(main, ["validate", str(manifest), "--voices", str(folder / "cast.parquet"),
                                       "--model", "random:tiny"])
    assert result.exit_code == 2 and str(problem) in result.stderr


def test_a_cast_too_long_for_a_conversation_is_a_problem_naming_speakers_and_positions(tmp_path):
    cast = read_cast(write_cast(tmp_path / "cast"))
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"conversation_id": ["both", "both", "one", "given"] * 1,
                             "turn_index": [0, 1, 0, 0], "speaker": [0, 1, 1, 0], "text": ["x"] * 4,
                             "audio": [None, None, None, "own.wav"]}), manifest)
    pairs = speaker_pairs([str(manifest)])
    assert sorted(zip(pairs["conversation_id"].to_pylist(), pairs["speaker"].to_pylist())) == \
        [("both", 0), ("both", 1), ("one", 1)]  # "given" brings its own recording for speaker 0
    positions = lambda speaker, text: 10
    # Ann: 2 prompts of 10 text positions + 5 frames + 1 EOS = 32; Bo: 16. "both" needs 48.
    assert check_window(cast, pairs, positions, window=48 + 20, turn_room=20) == []
    [problem] = check_window(cast, pairs, positions, window=48 + 19, turn_room=20)
    assert "conversation both need 48 positions (speaker 0 (Ann) 32, speaker 1 (Bo) 16)" in problem.message
    assert problem.file == cast.source and "window of 67" in problem.message


def test_the_window_check_counts_each_conversations_longest_turn_and_given_turns(tmp_path):
    """What the engine keeps beside the cast: the conversation's own given turns (never dropped) and the turn
    it renders, each conversation's own, as validation counted them (report.rooms)."""
    from jobs.manifests.manifest import validate_manifests

    cast = read_cast(write_cast(tmp_path / "cast"))  # Ann 32 positions, Bo 16 (10 per text, as below)
    tone(tmp_path / "own.wav", seconds=0.8)  # 10 frames + its EOS frame
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({
        "conversation_id": ["short", "long", "long", "given", "given", "late", "late"],
        "turn_index": [0, 0, 1, 0, 1, 0, 1], "speaker": [0, 0, 0, 1, 0, 0, 1], "text": ["x"] * 7,
        "audio": [None, None, None, "own.wav", None, None, "own.wav"],
        "max_audio_length_ms": pa.array([800, 800, 4000, None, 800, 800, None], pa.int64())}), manifest)
    positions = lambda speaker, text: 10
    report = validate_manifests([str(manifest)], text_positions=positions, collect_rooms=True)
    rooms = {r["conversation_id"]: (r["given"], r["longest"], r["given_first"]) for r in report.rooms.to_pylist()}
    # Turns: 10 text positions + max_audio_length_ms / 80 frames; "given"'s recording 10 + 11 frames. "late"
    # gives its recording after the turn it renders, which never has it in context: not counted.
    assert rooms == {"short": (0, 20, True), "long": (0, 60, True), "given": (21, 20, True), "late": (0, 20, False)}
    pairs = speaker_pairs([str(manifest)])
    # "long": Ann's 32 + its 4 s turn's 60 = 92; with one default turn of 20 it looked like 52.
    assert check_window(cast, pairs, positions, window=91 + 1, turn_room=20, rooms=report.rooms) == []
    [problem] = check_window(cast, pairs, positions, window=91, turn_room=20, rooms=report.rooms)
    assert "conversation long need 32 positions" in problem.message and "longest turn up to 60: 92" in problem.message
    assert check_window(cast, pairs, positions, window=91, turn_room=20) == []  # what the old check saw
    # "given": Ann's 32 + its own recording's 21 + a 20-position turn = 73, named with its given turns.
    [problem] = check_window(cast, pairs, positions, window=72, turn_room=20,
                             rooms=report.rooms.filter(pc.equal(report.rooms["conversation_id"], "given")))
    assert "conversation given need 32 positions" in problem.message and "its given turns 21" in problem.message


def test_validate_refuses_a_cast_that_leaves_no_room_for_a_conversations_long_turn(tmp_path):
    folder = tmp_path / "cast"
    folder.mkdir()
    # One 45 s prompt (563 frames) and a 120 s turn (1500 frames): each fits the window, not both.
    cast = write_cast(folder, speaker=pa.array([0], pa.int32()), text=["A long reading."],
                      audio=[tone(folder / "long.wav", seconds=45.0)])
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"conversation_id": ["epic", "brief"], "turn_index": [0, 0], "speaker": [0, 0],
                             "text": ["x", "y"], "max_audio_length_ms": pa.array([120_000, None], pa.int64())}),
                   manifest)
    args = ["validate", str(manifest), "--model", "random:tiny", "--voices", cast]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "conversation epic need" in result.stderr and "longest turn up to 15" in result.stderr
    pq.write_table(pq.read_table(manifest).slice(1), manifest)  # "brief": a default 10 s turn fits
    assert CliRunner().invoke(main, args).exit_code == 0


def test_another_cast_is_another_job():
    storage_fp = fingerprint("m", None, "wav", {}, "cast-a")
    assert fingerprint("m", None, "wav", {}) == {k: v for k, v in storage_fp.items() if k != "voices"}


def test_resuming_with_another_cast_is_refused(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    ensure_job_record(storage, fingerprint("m", None, "wav", {}, "cast-a"), cast=[{"speaker": 0, "hash": "h"}])
    check_job_record(storage, fingerprint("m", None, "wav", {}, "cast-a"))
    with pytest.raises(JobMismatch, match="voices: 'cast-a' -> 'cast-b'"):
        check_job_record(storage, fingerprint("m", None, "wav", {}, "cast-b"))
    with pytest.raises(JobMismatch, match="voices: 'cast-a' -> None"):
        check_job_record(storage, fingerprint("m", None, "wav", {}))


def render(tmp_path, name, turns: list[TurnSpec], cast=None) -> LocalStorage:
    worker = RenderWorker("random:tiny", str(tmp_path / name), device="cpu", batch_size=2,
                          defaults=Defaults(max_audio_length_ms=400), cast=cast)
    feeder = Feeder()
    feeder.put([WorkItem(ConversationSpec(name, turns))])
    feeder.close()
    events = render_all(worker, FeederFeed(feeder, "w1"))
    assert [e.get("error") for e in events if e["event"] == "done"] == [None]
    return LocalStorage(tmp_path / name)


def test_the_cast_conditions_a_conversation_exactly_as_given_turns_in_the_manifest_do(csm_cache, tmp_path):
    """With the cast, "cast" renders as if its manifest began with Ann's two prompts and Bo's one as given turns
    (what users had to repeat in every conversation before): the same codes for the same seeds. Its metadata
    names the voice each turn was conditioned on."""
    cast = read_cast(write_cast(tmp_path / "cast"))
    prompts = [(s, p) for s in (0, 1) for p in cast.voices[s].prompts]
    lines = [(0, "Hello from Ann.", 11), (1, "And Bo answers.", 12)]
    with_cast = render(tmp_path, "cast", [TurnSpec("cast", i, s, t, seed=seed)
                                          for i, (s, t, seed) in enumerate(lines)], cast)
    given = [TurnSpec("manual", i, s, p.text, audio=p.audio) for i, (s, p) in enumerate(prompts)]
    manual = render(tmp_path, "manual", given + [TurnSpec("manual", len(given) + i, s, t, seed=seed)
                                                 for i, (s, t, seed) in enumerate(lines)])
    without = render(tmp_path, "none", [TurnSpec("none", i, s, t, seed=seed) for i, (s, t, seed) in enumerate(lines)])
    assert without.read_bytes(layout.codes_key("none", 0)) != with_cast.read_bytes(layout.codes_key("cast", 0))
    for i in range(len(lines)):
        assert with_cast.read_bytes(layout.codes_key("cast", i)) == \
            manual.read_bytes(layout.codes_key("manual", i + len(given))), f"turn {i}"
    meta = pq.read_table(tmp_path / "cast" / layout.metadata_key("cast")).to_pylist()
    assert [(r["turn_index"], r["voice_name"], r["voice_hash"]) for r in meta] == \
        [(0, "Ann", cast.voices[0].hash), (1, "Bo", cast.voices[1].hash)]
    rows = pq.read_table(tmp_path / "manual" / layout.metadata_key("manual")).to_pylist()
    assert {r["voice_name"] for r in rows} == {None}


def test_a_conversation_with_its_own_recording_for_a_speaker_keeps_it(tmp_path):
    cast = read_cast(write_cast(tmp_path / "cast"))
    own = TurnSpec("c", 0, 0, "my own prompt", audio="mine.wav")
    turns = [own, TurnSpec("c", 1, 0, "hello"), TurnSpec("c", 2, 1, "hi"), TurnSpec("c", 3, 5, "not in cast")]
    assert cast.speakers_for(turns) == [1]


@pytest.mark.slow
def test_run_with_a_cast_records_it_shows_it_and_refuses_another(tmp_path, csm_render):
    cast_file = write_cast(tmp_path / "cast")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"conversation_id": ["a", "a", "b"], "turn_index": [0, 1, 0], "speaker": [0, 1, 1],
                             "text": ["One.", "Two.", "Three."]}), manifest)
    out = tmp_path / "out"
    args = ("--model", "random:tiny", "--max-audio-length-ms", 240, "--batch-size", 2, "--device", "cpu")
    result = csm_render("run", manifest, "--out", out, "--voices", cast_file, *args)
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out / "metadata").to_pylist()
    assert sorted((r["conversation_id"], r["turn_index"], r["voice_name"]) for r in rows) == \
        [("a", 0, "Ann"), ("a", 1, "Bo"), ("b", 0, "Bo")]
    status = csm_render("status", out)
    assert "voice: speaker 0 Ann, 2 prompt(s)" in status.stdout and "voice: speaker 1 Bo" in status.stdout

    tone(tmp_path / "cast" / "b.wav", hz=333.0)  # another voice for Bo: another cast, another job
    again = csm_render("run", manifest, "--out", out, "--voices", cast_file, *args)
    assert again.returncode == 2 and "voices:" in again.stderr and "--new-run" in again.stderr


def test_a_cast_on_s3_names_its_recordings_by_s3_uri_and_hashes_them(raw, bucket, tmp_path):
    """A cast file and its recordings under an s3:// prefix (moto's server): the relative audio paths resolve
    against that prefix, and the hashes are the ones of the same cast read locally."""
    local = read_cast(write_cast(tmp_path / "cast"))
    for path in (tmp_path / "cast").iterdir():
        raw.put_object(Bucket=bucket, Key=f"casts/{path.name}", Body=path.read_bytes())
    remote = read_cast(f"s3://{bucket}/casts/cast.parquet")
    assert [p.audio for p in remote.voices[1].prompts] == [f"s3://{bucket}/casts/b.wav"]
    assert (remote.hash, remote.voices[0].hash) == (local.hash, local.voices[0].hash)
