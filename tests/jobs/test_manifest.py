import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

import jobs.manifests.audio
from jobs.manifests.manifest import (ManifestError, Problem, expand_manifest_paths, load_conversations,
                           validate_manifests)


def write(path, **columns) -> str:
    """One Parquet file; a column passed as a pa.Array keeps its Arrow type."""
    pq.write_table(pa.table(columns), path)
    return str(path)


def turns(conv="c1", n=3, **overrides) -> dict:
    """Columns of a valid n-turn conversation, with some columns replaced."""
    columns = {"conversation_id": [conv] * n, "turn_index": list(range(n)),
               "speaker": [i % 2 for i in range(n)], "text": [f"turn {i}" for i in range(n)]}
    return {**columns, **overrides}


def write_wav(path, seconds=0.5) -> str:
    t = np.arange(int(24_000 * seconds)) / 24_000
    soundfile.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), 24_000, subtype="PCM_16")
    return str(path)


def offline_hub(monkeypatch, cache) -> None:
    """No hub: HF_HUB_OFFLINE and an empty hub cache, for this process (huggingface_hub reads both at import, so
    its module constants are set too) and for any subprocess."""
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))


@pytest.fixture(params=["library", "cli-offline"])
def validate(request, monkeypatch, tmp_path_factory):
    """validate_manifests; with "cli-offline" also `csm-render validate` on the same files with no --model and
    no hub (the default model's tokenizer cannot be had): the very problem lines and exit 2 for a bad manifest,
    exit 0 with the notice that the window check was skipped for a valid one."""
    if request.param == "library":
        return validate_manifests
    from click.testing import CliRunner

    from jobs.cli import main

    offline_hub(monkeypatch, tmp_path_factory.mktemp("empty-hub-cache"))

    def both(args, check_audio=True):
        report = validate_manifests(args, check_audio=check_audio)
        result = CliRunner().invoke(main, ["validate", *args, *([] if check_audio else ["--no-audio-check"])])
        if report.ok:
            assert result.exit_code == 0, result.output
            assert "window-length check skipped: the tokenizer of sesame/csm-1b is not available" in result.stdout
        else:
            assert result.exit_code == 2, result.output
            assert result.stderr.splitlines() == [str(p) for p in report.problems] + [
                f"{len(report.problems)} problem(s): nothing was rendered or written."]
        return report

    return both


def only_problem(report) -> Problem:
    assert len(report.problems) == 1, [str(p) for p in report.problems]
    return report.problems[0]


def assert_problem(problem, file, conv, turn, column, phrase):
    fields = (problem.file, problem.conversation_id, problem.turn_index, problem.column)
    assert fields == (str(file), conv, turn, column)
    assert phrase in problem.message


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["conversation_id", "turn_index", "speaker", "text"])
def test_missing_required_column(tmp_path, column, validate):
    columns = turns()
    del columns[column]
    path = write(tmp_path / "m.parquet", **columns)
    problem = only_problem(validate([path]))
    assert_problem(problem, path, None, None, column, f"missing required column {column}: add the column")


def test_string_speaker_is_a_type_error(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(speaker=["0", "1", "0"]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, None, None, "speaker", "has type string: use an integer type")


def test_float_turn_index_is_a_type_error(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(turn_index=[0.0, 1.0, 2.0]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, None, None, "turn_index", "has type double: use an integer type")
    assert "Int64" in problem.message  # the pandas cause and fix


def test_integer_conversation_id_is_a_type_error(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(conversation_id=[7, 7, 7]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, None, None, "conversation_id", "use a string type")


@pytest.mark.parametrize("column, conv, turn", [("speaker", "c1", 1), ("text", "c1", 1),
                                                ("turn_index", "c1", None), ("conversation_id", None, 1)])
def test_null_in_required_column(tmp_path, column, conv, turn, validate):
    columns = turns()
    columns[column] = [columns[column][0], None, columns[column][2]]
    path = write(tmp_path / "m.parquet", **columns)
    problem = only_problem(validate([path]))  # and no gap reported for the unplaced row
    assert_problem(problem, path, conv, turn, column, f"{column} is null")
    assert problem.row == 1


@pytest.mark.parametrize("text, phrase", [("", "text is empty"), (" \t\n", "text is only whitespace")])
def test_blank_text(tmp_path, text, phrase, validate):
    path = write(tmp_path / "m.parquet", **turns(text=["a", text, "c"]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", 1, "text", phrase)
    assert "give the words to speak" in problem.message


@pytest.mark.parametrize("conv, phrase", [
    ("a/b", "contains '/'"), ("..", "not allowed (it would be a path)"), (".", "not allowed (it would be a path)"),
    ("x" * 129, "129 characters long"), ("", "conversation_id is empty"), ("a b", "contains ' '"),
    ("caf\u00e9", "contains '\u00e9'"),
])
def test_bad_conversation_id(tmp_path, conv, phrase, validate):
    path = write(tmp_path / "m.parquet", **turns(conv, n=1))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, None, 0, "conversation_id", phrase)
    assert str(problem) == f"{path}: row 0: column conversation_id: {problem.message}"


def test_conversation_id_of_128_allowed_characters_is_valid(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(("Ab9._-" * 22)[:128], n=1))
    assert validate([path]).ok


def test_duplicate_turn_index_across_two_files(tmp_path, validate):
    first = write(tmp_path / "a.parquet", **turns(n=2))
    second = write(tmp_path / "b.parquet", **turns(n=1, turn_index=[1]))
    problem = only_problem(validate([first, second]))
    assert_problem(problem, second, "c1", 1, "turn_index", "duplicate turn_index 1")
    assert f"first at {first} row 1" in problem.message
    assert problem.row == 0


def test_missing_turn_index_is_a_gap(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(n=4, turn_index=[0, 1, 2, 5]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", None, "turn_index", "must be 0..n-1 without gaps: missing 3, 4")
    assert str(problem).startswith(f"{path}: conversation c1: column turn_index: ")


def test_long_gap_lists_the_first_missing_indices(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(n=2, turn_index=[1, 100]))
    problem = only_problem(validate([path]))
    assert "missing 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (99 in all)" in problem.message


def test_negative_turn_index(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(turn_index=[-1, 0, 1]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", -1, "turn_index", "turn_index -1 is out of range: use an integer >= 0")


def test_a_conversation_whose_only_turn_index_is_negative_is_one_problem(tmp_path, validate):
    # Its one row is unusable, so no row of any conversation has a usable turn index left to check for gaps.
    path = write(tmp_path / "m.parquet", **turns(n=1, turn_index=[-1]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", -1, "turn_index", "turn_index -1 is out of range: use an integer >= 0")


def test_conversation_ids_that_differ_only_in_case_are_refused_at_their_rows(tmp_path, validate):
    first = write(tmp_path / "a.parquet", **turns("Conv", n=2))
    second = write(tmp_path / "b.parquet", conversation_id=["x", "conv", "conv", "CONV"], turn_index=[0, 0, 1, 0],
                   speaker=[0, 0, 1, 0], text=["a", "b", "c", "d"])
    report = validate([first, second])
    assert [(p.file, p.row, p.conversation_id, p.column) for p in report.problems] == [
        (second, 1, "conv", "conversation_id"), (second, 3, "CONV", "conversation_id")]
    assert f"'conv' differs only in case from 'Conv' (first at {first} row 0)" in report.problems[0].message
    assert "case-insensitive filesystem" in report.problems[1].message


def test_conversation_ids_that_differ_in_more_than_case_are_two_conversations(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **{k: turns("conv-a", n=1)[k] + turns("conv-b", n=1)[k]
                                            for k in turns(n=1)})
    assert validate([path]).ok


def test_negative_speaker(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(speaker=[0, -2, 1]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", 1, "speaker", "speaker -2 is out of range: use an integer speaker id >= 0")


@pytest.mark.parametrize("column, bad, arrow_type, phrase", [
    ("temperature", 0.0, pa.float64(), "> 0 and <= 5"),
    ("temperature", 5.5, pa.float32(), "> 0 and <= 5"),
    ("temperature", float("nan"), pa.float64(), "> 0 and <= 5"),
    ("temperature", 6, pa.int32(), "> 0 and <= 5"),
    ("top_k", 0, pa.int64(), "from 1 to 2051"),
    ("top_k", 2052, pa.int16(), "from 1 to 2051"),
    ("max_audio_length_ms", 0, pa.int64(), "from 1 to 120000"),
    ("max_audio_length_ms", 120_001, pa.int32(), "from 1 to 120000"),
    ("seed", -1, pa.int64(), "from 0 to 2**63-1"),
    ("seed", 2**63, pa.uint64(), "from 0 to 2**63-1"),
    ("pause_ms", -1, pa.int64(), "from 0 to 60000"),
    ("pause_ms", 60_001, pa.int64(), "from 0 to 60000"),
])
def test_out_of_range_sampling_column(tmp_path, column, bad, arrow_type, phrase, validate):
    good = {"temperature": 5, "top_k": 2051, "max_audio_length_ms": 120_000, "seed": 2**63 - 1, "pause_ms": 60_000}
    values = pa.array([None, bad, good[column]], arrow_type)
    path = write(tmp_path / "m.parquet", **turns(**{column: values}))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", 1, column, f"{column} {bad} is out of range")
    assert phrase in problem.message and "or null for the job default" in problem.message


def test_float_in_integer_sampling_column_is_a_type_error(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(top_k=[50.0, None, 20.0]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, None, None, "top_k", "use an integer type")


def test_given_audio_that_does_not_exist(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(audio=["voices/nope.wav", None, None]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", 0, "audio", f"audio file not found: {tmp_path / 'voices' / 'nope.wav'}")


def test_given_audio_that_cannot_be_decoded(tmp_path, validate):
    (tmp_path / "garbage.wav").write_bytes(os.urandom(2000))
    path = write(tmp_path / "m.parquet", **turns(audio=["garbage.wav", None, None]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", 0, "audio", f"audio {tmp_path / 'garbage.wav'} cannot be decoded")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_given_audio_with_non_finite_samples(tmp_path, validate, bad, subtype):
    samples = np.full(100_000, 0.1, dtype=np.float32)  # past one read block, so every block is looked at
    samples[-3] = bad
    soundfile.write(tmp_path / "broken.wav", samples, 24_000, subtype=subtype)
    path = write(tmp_path / "m.parquet", **turns(audio=["broken.wav", None, None]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", 0, "audio", f"audio {tmp_path / 'broken.wav'} contains NaN or infinite samples")


def test_given_float_audio_with_finite_samples_is_valid(tmp_path, validate):
    soundfile.write(tmp_path / "fine.wav", np.full(1000, 0.1, dtype=np.float32), 24_000, subtype="FLOAT")
    path = write(tmp_path / "m.parquet", **turns(audio=["fine.wav", None, None]))
    assert validate([path]).ok


def test_audio_not_checked_when_check_audio_is_false(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(audio=["nope.wav", None, None]))
    assert validate([path], check_audio=False).ok


def test_empty_audio_string(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(audio=["", None, None]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", 0, "audio", "audio is empty: leave it null")


def test_s3_audio_is_accepted_unchecked_and_other_schemes_are_not(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(audio=["s3://bucket/voice.wav", "https://x.org/a.wav", None]))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, "c1", 1, "audio", "scheme 'https' is not supported")


def test_each_distinct_audio_file_is_probed_once(tmp_path, monkeypatch):
    write_wav(tmp_path / "voice.wav")
    calls = []
    real_info = jobs.manifests.audio.soundfile.info
    monkeypatch.setattr(jobs.manifests.audio.soundfile, "info", lambda p: calls.append(p) or real_info(p))
    first = write(tmp_path / "a.parquet", **turns("c1", audio=["voice.wav", None, "./voice.wav"]))
    second = write(tmp_path / "b.parquet", **turns("c2", audio=[str(tmp_path / "voice.wav"), None, None]))
    assert validate_manifests([first, second]).ok
    assert calls == [str(tmp_path / "voice.wav")]


def positions(speaker, text):
    return len(text.encode()) + 5


def test_text_too_long_for_the_window(tmp_path):
    # window 140 - 125 frames for the default 10 s leaves 15 positions: 10 bytes of text fit, 11 do not.
    path = write(tmp_path / "m.parquet", **turns(text=["x" * 10, "x" * 11, "x" * 11],
                                                 max_audio_length_ms=[None, None, 800]))
    problem = only_problem(validate_manifests([path], text_positions=positions, window=140))
    assert_problem(problem, path, "c1", 1, "text",
                   "text too long to fit the model's window (16 positions + 125 audio frames > 140): "
                   "shorten the text or split the turn")


def test_given_turn_window_counts_its_audio_and_eos_frame(tmp_path):
    write_wav(tmp_path / "two_seconds.wav", seconds=2.0)  # 25 frames, + 1 EOS frame
    path = write(tmp_path / "m.parquet", **turns(n=2, text=["x" * 10, "y"], audio=["two_seconds.wav", None],
                                                 max_audio_length_ms=[None, 80]))
    assert validate_manifests([path], text_positions=positions, window=41).ok
    problem = only_problem(validate_manifests([path], text_positions=positions, window=40))
    assert_problem(problem, path, "c1", 0, "text", "(15 positions + 26 audio frames > 40)")


def test_the_word_bound_refuses_what_cannot_fit_and_says_at_least(tmp_path):
    from csm_worker.model.prompt import word_bound_counter

    # 2048 - 125 frames leave 1923 positions: 1921 words (the first carries "[0]") + BOS and EOS fit, one more not.
    path = write(tmp_path / "m.parquet", **turns(n=2, text=["w " * 1921, "w " * 1922]))
    problem = only_problem(validate_manifests([path], text_positions=word_bound_counter()))
    assert_problem(problem, path, "c1", 1, "text", "(at least 1924 positions + 125 audio frames > 2048)")


def test_window_check_skipped_without_text_positions(tmp_path):
    path = write(tmp_path / "m.parquet", **turns(text=["x" * 5000] * 3))
    assert validate_manifests([path], window=10).ok


def test_file_that_is_not_parquet(tmp_path, validate):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"conversation_id,turn_index\nc1,0\n" * 10)
    good = write(tmp_path / "good.parquet", **turns())
    report = validate([str(bad), good])
    problem = only_problem(report)
    assert_problem(problem, bad, None, None, None, "cannot read as Parquet")
    assert "Traceback" not in str(problem)
    assert report.conversations == 1


def test_path_that_does_not_exist(tmp_path, validate):
    arg = str(tmp_path / "nope.parquet")
    problem = only_problem(validate([arg]))
    assert_problem(problem, arg, None, None, None, "no such file or folder")
    assert str(problem) == f"{arg}: no such file or folder: check the path"


def test_empty_folder(tmp_path, validate):
    (tmp_path / "empty").mkdir()
    problem = only_problem(validate([str(tmp_path / "empty")]))
    assert_problem(problem, tmp_path / "empty", None, None, None, "folder holds no .parquet files")


def test_glob_matching_nothing(tmp_path, validate):
    pattern = str(tmp_path / "part-*.parquet")
    problem = only_problem(validate([pattern]))
    assert_problem(problem, pattern, None, None, None, "pattern matches no files")


def test_no_arguments():
    problem = only_problem(validate_manifests([]))
    assert "no manifest given" in problem.message


def test_problems_come_in_file_and_row_order(tmp_path, validate):
    first = write(tmp_path / "a.parquet", **turns(n=2, speaker=[-1, 0], text=["x", ""]))
    second = write(tmp_path / "b.parquet", **turns(n=1, turn_index=[0], speaker=[-1]))
    report = validate([first, second])
    assert [(p.file, p.turn_index, p.column) for p in report.problems] == [
        (first, 0, "speaker"), (first, 1, "text"), (second, 0, "turn_index"), (second, 0, "speaker")]


def test_problems_are_capped(tmp_path):
    path = write(tmp_path / "m.parquet", **turns(n=10, speaker=[-1] * 10))
    report = validate_manifests([path], max_problems=3)
    assert [p.turn_index for p in report.problems[:3]] == [0, 1, 2]
    assert report.problems[3].message == "... and 7 more problems"
    assert len(report.problems) == 4


def test_load_conversations_raises_manifest_error(tmp_path):
    path = write(tmp_path / "m.parquet", **turns(speaker=[0, None, 1]))
    with pytest.raises(ManifestError) as caught:
        load_conversations([path])
    assert [p.column for p in caught.value.problems] == ["speaker"]
    assert f"{path}: row c1/1: column speaker: speaker is null" in str(caught.value)


def test_manifest_error_survives_pickling(tmp_path):
    path = write(tmp_path / "m.parquet", **turns(speaker=[0, None, 1]))
    with pytest.raises(ManifestError) as caught:
        load_conversations([path])
    copy = pickle.loads(pickle.dumps(caught.value))  # as when raised inside a Ray task
    assert copy.problems == caught.value.problems and str(copy) == str(caught.value)


# --- arguments ---------------------------------------------------------------------------------------------------

def test_folder_argument_reads_parquet_files_below_it_sorted(tmp_path, validate):
    folder = tmp_path / "manifest"
    (folder / "sub").mkdir(parents=True)
    (folder / "_temporary").mkdir()
    second = write(folder / "sub" / "part-0.parquet", **turns("c2"))
    first = write(folder / "b.parquet", **turns("c1"))
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-0.parquet.crc").write_bytes(b"junk")
    (folder / "_temporary" / "x.parquet").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not a manifest")
    report = validate([str(folder)])
    assert report.ok, [str(p) for p in report.problems]
    assert report.files == [first, second]
    assert report.conversations == 2


def test_glob_argument(tmp_path, validate):
    first = write(tmp_path / "part-0.parquet", **turns("c1"))
    second = write(tmp_path / "part-1.parquet", **turns("c2"))
    write(tmp_path / "other.parquet", **turns("c3"))
    files, problems = expand_manifest_paths([str(tmp_path / "part-*.parquet")])
    assert (files, problems) == ([first, second], [])
    assert validate([str(tmp_path / "part-*.parquet")]).conversations == 2


def test_a_file_named_twice_is_read_once(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns())
    report = validate([path, str(tmp_path), str(tmp_path / "*.parquet")])
    assert report.ok and report.files == [path]


# --- valid manifests ---------------------------------------------------------------------------------------------

def test_conversation_spread_over_two_files_loads_in_turn_order(tmp_path):
    first = write(tmp_path / "a.parquet", conversation_id=["c2", "c1", "c1"], turn_index=[1, 3, 0],
                  speaker=[1, 1, 0], text=["c2 t1", "c1 t3", "c1 t0"])
    second = write(tmp_path / "b.parquet", conversation_id=["c1", "c2", "c1"], turn_index=[2, 0, 1],
                   speaker=[0, 0, 1], text=["c1 t2", "c2 t0", "c1 t1"])
    conversations = load_conversations([second, first])
    assert [c.conversation_id for c in conversations] == ["c1", "c2"]
    assert [t.turn_index for t in conversations[0].turns] == [0, 1, 2, 3]
    assert [t.text for t in conversations[0].turns] == ["c1 t0", "c1 t1", "c1 t2", "c1 t3"]
    assert [t.text for t in conversations[1].turns] == ["c2 t0", "c2 t1"]


def test_relative_audio_resolves_against_the_manifest_folder(tmp_path, monkeypatch):
    folder = tmp_path / "manifests"
    (folder / "voices").mkdir(parents=True)
    wav = write_wav(folder / "voices" / "alice.wav")
    write(folder / "m.parquet", **turns(audio=["voices/alice.wav", None, None]))
    monkeypatch.chdir(tmp_path)  # the manifest is named relative to a different folder than its audio
    [conversation] = load_conversations(["manifests/m.parquet"])
    given, rendered = conversation.turns[0], conversation.turns[1]
    assert given.audio == wav and given.is_given
    assert rendered.audio is None and not rendered.is_given
    assert conversation.num_to_render == 2


def test_summary_counts(tmp_path, validate):
    wav = write_wav(tmp_path / "voice.wav")
    first = write(tmp_path / "a.parquet", **turns("c1", n=3, speaker=[0, 1, 2], audio=[wav, None, None]))
    second = write(tmp_path / "b.parquet", **turns("c2", n=2, speaker=[1, 0]))
    report = validate([first, second])
    assert report.ok
    assert (report.conversations, report.turns_to_render, report.given_turns, report.speakers) == (2, 4, 1, 3)
    assert report.summary() == "2 files, 2 conversations, 4 turns to render, 1 given turn, 3 speakers"


def test_extra_columns_are_ignored_and_named_once(tmp_path, validate):
    first = write(tmp_path / "a.parquet", **turns("c1", notes=["a", "b", "c"], speaker_name=["x", "y", "x"]))
    second = write(tmp_path / "b.parquet", **turns("c2", notes=[1, 2, 3]))
    report = validate([first, second])
    assert report.ok
    assert report.ignored_columns == ["notes", "speaker_name"]
    assert report.summary().endswith("; ignored columns: notes, speaker_name")
    assert load_conversations([first])[0].turns[0].text == "turn 0"


def test_optional_nulls_mean_job_defaults(tmp_path):
    optional = {"audio": pa.array([None, None, None], pa.string()),
                "temperature": pa.array([None, 1, 2], pa.int8()),
                "top_k": pa.array([None, 50, None], pa.int32()),
                "max_audio_length_ms": pa.array([None] * 3, pa.int64()),
                "seed": pa.array([None, 7, None], pa.uint64()),
                "pause_ms": pa.array([300, None, None], pa.int16())}
    path = write(tmp_path / "m.parquet", **turns(**optional))
    [conversation] = load_conversations([path])
    first, second, _ = conversation.turns
    assert (first.temperature, first.top_k, first.seed, first.pause_ms, first.audio) == (None, None, None, 300, None)
    assert (second.temperature, second.top_k, second.seed) == (1.0, 50, 7)
    assert isinstance(second.temperature, float)


def test_optional_columns_of_only_nulls_mean_job_defaults(tmp_path, validate):
    """pyarrow types a column of only None as `null` (e.g. `audio=[None] * n` when no turn is given): that means
    no value in any row, not a type error (whose advice, .astype(str), would turn every null into "None")."""
    nulls = {name: pa.nulls(3) for name in ("audio", "temperature", "top_k", "seed", "pause_ms")}
    path = write(tmp_path / "m.parquet", **turns(**nulls))
    report = validate([path])
    assert report.ok, [str(p) for p in report.problems]
    assert (report.turns_to_render, report.given_turns) == (3, 0)
    [conversation] = load_conversations([path])
    assert all((t.audio, t.temperature, t.top_k, t.seed, t.pause_ms) == (None,) * 5 for t in conversation.turns)


def test_a_required_column_of_only_nulls_names_the_column(tmp_path, validate):
    path = write(tmp_path / "m.parquet", **turns(speaker=pa.nulls(3)))
    problem = only_problem(validate([path]))
    assert_problem(problem, path, None, None, "speaker", "speaker is null in every row: give every turn a speaker")


def test_a_column_given_twice_is_a_clear_problem(tmp_path, validate):
    table = pa.table(turns())
    table = table.append_column("text", pa.array(["again"] * 3))
    path = str(tmp_path / "m.parquet")
    pq.write_table(table, path)
    problem = only_problem(validate([path]))
    assert_problem(problem, path, None, None, "text", "column text appears 2 times: keep one")


def test_dictionary_encoded_strings_are_accepted(tmp_path, validate):
    columns = turns(conversation_id=pa.array(["c1"] * 3).dictionary_encode(),
                    text=pa.array(["a", "b", "c"]).dictionary_encode())
    path = write(tmp_path / "m.parquet", **columns)
    assert validate([path]).ok
    assert [t.text for t in load_conversations([path])[0].turns] == ["a", "b", "c"]


def test_large_and_view_strings_are_accepted(tmp_path, validate):
    columns = turns(conversation_id=pa.array(["c1"] * 3, pa.large_string()),
                    text=pa.array(["a", "b", "c"], pa.string_view()))
    path = write(tmp_path / "m.parquet", **columns)
    assert validate([path]).ok


def test_rows_spanning_several_batches(tmp_path, monkeypatch, validate):
    monkeypatch.setattr("jobs.manifests.manifest.BATCH_ROWS", 4)
    backwards = list(range(9, -1, -1))
    bad = write(tmp_path / "bad.parquet", **turns("c1", n=10, turn_index=backwards, speaker=[0] * 8 + [-1, 0]))
    problem = only_problem(validate([bad]))
    assert (problem.turn_index, problem.row) == (1, 8)
    good = write(tmp_path / "good.parquet", **turns("c2", n=10, turn_index=backwards))
    assert [t.turn_index for t in load_conversations([good])[0].turns] == list(range(10))
