"""captions: SRT and WebVTT parsed by the `srt` and `webvtt-py` packages, their times matching the JSON timeline and
the stitched file's sample positions."""

from __future__ import annotations

import json
from datetime import timedelta

import srt
import webvtt

from .helpers import SR, local_job
from .test_conversations import JOB, export


def clock_ms(text: str) -> int:
    h, m, s = text.split(":")
    return (int(h) * 3600 + int(m) * 60) * 1000 + round(float(s) * 1000)


def test_srt_and_webvtt_parse_with_one_cue_per_turn_on_the_timeline(tmp_path):
    storage, rows = local_job(tmp_path, JOB)
    export(storage, kinds=("captions",), pause_ms=400)
    folder = tmp_path / "out/exports/captions"
    timeline = json.loads((folder / "talk.json").read_text())
    cues_srt = list(srt.parse((folder / "talk.srt").read_text()))
    cues_vtt = webvtt.read(str(folder / "talk.vtt")).captions

    assert len(cues_srt) == len(cues_vtt) == len(timeline["turns"]) == 4
    at = 0
    for row, turn, a, b in zip(rows["talk"], timeline["turns"], cues_srt, cues_vtt):
        assert (turn["start_sample"], turn["end_sample"]) == (at, at + row["num_samples"])
        at += row["num_samples"] + (400 if row["pause_ms"] is None else row["pause_ms"]) * 24
        start_ms, end_ms = turn["start_sample"] * 1000 // SR, turn["end_sample"] * 1000 // SR
        assert (a.start, a.end) == (timedelta(milliseconds=start_ms), timedelta(milliseconds=end_ms))
        assert (clock_ms(b.start), clock_ms(b.end)) == (start_ms, end_ms)  # its *_in_seconds are whole seconds
        assert a.content == f"Speaker {row['speaker']}: {row['text']}"
        assert b.voice == f"Speaker {row['speaker']}" and b.text == row["text"]
        assert (turn["speaker"], turn["text"], turn["given"]) == (row["speaker"], row["text"], False)
    stitched_samples = json.loads((tmp_path / "out/exports/conversations/talk.json").read_text()) \
        if (tmp_path / "out/exports/conversations/talk.json").exists() else None
    assert stitched_samples is None  # captions alone made no audio


def test_captions_end_where_the_stitched_audio_says(tmp_path):
    storage, _ = local_job(tmp_path, JOB)
    export(storage, kinds=("conversations", "captions"), pause_ms=123)
    turns = json.loads((tmp_path / "out/exports/captions/talk.json").read_text())["turns"]
    audio = json.loads((tmp_path / "out/exports/conversations/talk.json").read_text())
    assert turns[-1]["end_sample"] + round(turns[-1]["pause_after_s"] * SR) == audio["num_samples"]


def test_a_cast_voice_names_its_speaker_in_the_captions(tmp_path):
    """With `--voices`, a turn's metadata names the voice it was conditioned on: captions use that name."""
    storage, rows = local_job(tmp_path, {"talk": [(2, None), (3, None), (2, None)]}, voices={0: "Ann"})
    export(storage, kinds=("captions",))
    folder = tmp_path / "out/exports/captions"
    assert [c.content.split(":")[0] for c in srt.parse((folder / "talk.srt").read_text())] == \
        ["Ann", "Speaker 1", "Ann"]
    assert [c.voice for c in webvtt.read(str(folder / "talk.vtt")).captions] == ["Ann", "Speaker 1", "Ann"]
