"""conversations: one file per conversation, turns in order with their pauses, fades at the joins, four formats,
loudness normalization. Real files in a local OUT, read back with soundfile and pyloudnorm."""

from __future__ import annotations

import io
import json

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from jobs.export.command import export_job, prepare
from jobs.export.options import ExportOptions

from .helpers import SR, local_job

JOB = {"talk": [(3, 250), (5, None), (2, 0), (4, 1000)], "short": [(1, None)]}


def export(storage, **kw):
    dest = kw.pop("dest", None)
    opts = ExportOptions(kinds=kw.pop("kinds", ("conversations", "captions")), **kw)
    view, dest = prepare(storage.url, dest, opts)
    return export_job(view, dest, opts), dest


def stitched(storage, cid, ext=".wav"):
    data, rate = sf.read(f"{storage.url}/exports/conversations/{cid}{ext}", dtype="int16")
    assert rate == SR
    return data


def turn_pcm(storage, row):
    return sf.read(io.BytesIO(storage.read_bytes(row["audio_path"])), dtype="int16")[0]


def test_duration_is_the_turns_samples_plus_pauses_exactly(tmp_path):
    storage, rows = local_job(tmp_path, JOB)
    summary, _ = export(storage, pause_ms=400)
    assert summary.exported["conversations"] == 2 and not summary.errors
    pauses = [250, 400, 0, 1000]  # the row's own, else --pause-ms; 0 allowed
    expected = sum(r["num_samples"] for r in rows["talk"]) + sum(p * 24 for p in pauses)
    assert len(stitched(storage, "talk")) == expected
    record = json.loads((tmp_path / "out/exports/conversations/talk.json").read_text())
    assert record["num_samples"] == expected and record["turns"] == 4
    assert len(stitched(storage, "short")) == rows["short"][0]["num_samples"] + 400 * 24


def test_each_turn_appears_unchanged_at_its_caption_start(tmp_path):
    """Without fades, bit-exact; with the default fades, all but the fade's samples at each edge, and the pauses
    are digital silence."""
    storage, rows = local_job(tmp_path, JOB)
    export(storage, fade_ms=0)
    timeline = json.loads((tmp_path / "out/exports/captions/talk.json").read_text())["turns"]
    audio = stitched(storage, "talk")
    for row, cue in zip(rows["talk"], timeline):
        assert cue["start_s"] == cue["start_sample"] / SR
        np.testing.assert_array_equal(audio[cue["start_sample"]:cue["end_sample"]], turn_pcm(storage, row))
    gaps = [audio[a["end_sample"]:b["start_sample"]] for a, b in zip(timeline, timeline[1:])]
    assert all(not g.any() for g in gaps) and [len(g) for g in gaps] == [250 * 24, 400 * 24, 0]

    export(storage, fade_ms=5)  # another setting: the file is made again
    faded, fade = stitched(storage, "talk"), 5 * 24
    for row, cue in zip(rows["talk"], timeline):
        original, got = turn_pcm(storage, row), faded[cue["start_sample"]:cue["end_sample"]]
        np.testing.assert_array_equal(got[fade:-fade], original[fade:-fade])
        assert abs(int(got[0])) < abs(int(original[0])) or original[0] == 0  # ramped in from silence
        assert abs(int(got[-1])) <= max(abs(int(original[-1])) // 10, 1)  # and out to it


@pytest.mark.parametrize("fmt,ext", [("flac", ".flac"), ("mp3", ".mp3"), ("opus", ".opus")])
def test_formats_decode_to_the_same_length(tmp_path, fmt, ext):
    storage, rows = local_job(tmp_path, JOB)
    export(storage, audio_format=fmt, kinds=("conversations",))
    path = tmp_path / f"out/exports/conversations/talk{ext}"
    info = sf.info(str(path))
    expected = sum(r["num_samples"] for r in rows["talk"]) + (250 + 400 + 0 + 1000) * 24
    if fmt == "flac":  # lossless: the very samples
        assert info.frames == expected
    else:  # lossy codecs add encoder delay/padding: within 100 ms
        assert info.format == {"mp3": "MP3", "opus": "OGG"}[fmt] and abs(info.frames - expected) < 0.1 * SR


@pytest.mark.parametrize("target", [-16.0, -20.0])
def test_loudness_lands_on_target_under_the_ceiling(tmp_path, target):
    storage, _ = local_job(tmp_path, {"talk": [(20, 300), (25, None), (15, 200)]})
    export(storage, loudness_lufs=target, true_peak_db=-1.0, kinds=("conversations",))
    audio, rate = sf.read(str(tmp_path / "out/exports/conversations/talk.wav"), dtype="float64")
    measured = pyloudnorm.Meter(rate).integrated_loudness(audio)
    assert abs(measured - target) <= 0.5
    assert np.max(np.abs(audio)) <= 10 ** (-1.0 / 20)
    loud = json.loads((tmp_path / "out/exports/conversations/talk.json").read_text())["loudness"]
    assert loud["before_lufs"] < target - 3 and abs(loud["after_lufs"] - target) <= 0.5
    assert loud["true_peak_db"] <= -1.0 and not loud["limited_by_ceiling"]


def test_a_ceiling_stops_the_gain_short_of_the_target_and_says_so(tmp_path):
    storage, _ = local_job(tmp_path, {"talk": [(20, 300), (25, None)]})
    export(storage, loudness_lufs=-5.0, true_peak_db=-6.0, kinds=("conversations",))
    audio, _ = sf.read(str(tmp_path / "out/exports/conversations/talk.wav"), dtype="float64")
    assert np.max(np.abs(audio)) <= 10 ** (-6.0 / 20)
    loud = json.loads((tmp_path / "out/exports/conversations/talk.json").read_text())["loudness"]
    assert loud["limited_by_ceiling"] and loud["after_lufs"] < -5.5
