"""Disclosure and verification of a finished job and its exports: every turn file and every exported episode
(WAV, MP3, Opus) says in its own tags that it is synthetic and how it is marked, the datasets say so in their card
and per-sample JSON, and `csm-render verify` reads every file of OUT and its exports.

What no test here can show: that a mark survives MP3 or Opus. The weights are random (trained for nothing), so
nothing they write can be read back; `scripts/gpu_check.sh --watermark` verifies real marks, through these same
exports, wherever the real sony/silentcipher checkpoint is available. Here verify's answer for each file is held
to the detector's answer on that file's decoded samples, and a detector scripted to hear the reference key shows
the marked path and exit 0."""

from __future__ import annotations

import io
import json
import re
import tarfile

import mutagen
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import csm_worker.watermark as watermark
from jobs.cli import main
from jobs.verify import Clip, decode

from .conftest import upload_folder
from .test_crash_resume import write_manifest as write_rows
from tests.csm_worker.watermark.test_parity import Scripted

pytestmark = pytest.mark.slow

JOB_ARGS = ("--model", "random:tiny", "--max-audio-length-ms", 1000, "--batch-size", 2, "--seed", 2,
            "--qc-retries", 0)
ROWS = [("v-a", 0, 0, "Good morning to you."), ("v-a", 1, 1, "Did you sleep at all?"),
        ("v-b", 0, 0, "Not much, it was loud.")]
LINE = re.compile(r"^(marked|unmarked)\s+key (\S+)\s+confidence (\S+)\s+(.+)$")


@pytest.fixture(scope="module")
def out(tmp_path_factory, csm_render):
    root = tmp_path_factory.mktemp("verify")
    out = root / "out"
    result = csm_render("run", write_rows(root / "dialogue.parquet", ROWS), "--out", out, *JOB_ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    for fmt in ("mp3", "opus"):
        done = csm_render("export", out, "--to", "conversations", "--format", fmt, "--dest", out / "exports" / fmt)
        assert done.returncode == 0, done.stdout + done.stderr
    done = csm_render("export", out, "--to", "hf,webdataset", "--include-failed-qc")
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_every_turn_file_says_it_is_synthetic_and_marked(out):
    files = sorted((out / "audio").rglob("*.wav"))
    assert len(files) == len(ROWS)
    for f in files:
        tags = sf.SoundFile(f).copy_metadata()  # the WAV's LIST/INFO chunk
        assert tags["comment"].startswith("Synthetic speech, AI-generated with random:tiny")
        assert "Watermarked with silentcipher (key d4d39238c9)" in tags["comment"]


@pytest.mark.parametrize("fmt", ["mp3", "opus"])
def test_every_episode_says_it_is_synthetic_in_its_own_tags(out, fmt):
    episodes = sorted((out / "exports" / fmt / "conversations").glob(f"*.{fmt}"))
    assert [e.stem for e in episodes] == ["v-a", "v-b"]
    for episode in episodes:
        tags = mutagen.File(episode).tags  # ID3v2 for MP3, Vorbis comments for Opus: read by another library
        comment = str(tags["COMM::eng"]) if fmt == "mp3" else tags["comment"][0]
        assert "Synthetic speech" in comment and "key d4d39238c9" in comment
        record = json.loads((episode.parent / f"{episode.stem}.json").read_text())
        assert record["synthetic"] is True and record["watermark"] == "on" and record["watermark_key"] == "d4d39238c9"


def test_the_datasets_say_it_is_synthetic(out):
    card = (out / "exports" / "hf" / "README.md").read_text()
    assert "## Synthetic speech" in card and "watermark" in card
    import pyarrow.parquet as pq

    rows = [r for shard in sorted((out / "exports" / "hf" / "data").glob("*.parquet"))
            for r in pq.read_table(shard, columns=["watermark", "watermark_key"]).to_pylist()]
    assert len(rows) == len(ROWS) and {(r["watermark"], r["watermark_key"]) for r in rows} == {("on", "d4d39238c9")}
    samples = []
    for shard in sorted((out / "exports" / "webdataset").rglob("*.tar")):
        with tarfile.open(shard) as tar:
            samples += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert len(samples) == len(ROWS)
    assert all(s["synthetic"] is True and "Synthetic speech" in s["disclosure"] for s in samples)


def verify(*args):
    return CliRunner().invoke(main, ["verify", *map(str, args)])


def test_verify_reads_every_file_of_out_and_its_exports_as_the_detector_does(out):
    result = verify(out, "--search-step", 0)
    assert result.exit_code == 1, result.output  # random weights read no key: every file is unmarked
    lines = [LINE.match(line) for line in result.stdout.splitlines()]
    assert all(lines), result.stdout
    names = [m[4] for m in lines]
    assert sum(n.endswith(".wav") and "/audio/" in n for n in names) == len(ROWS)
    assert sum(n.endswith(".mp3") for n in names) == sum(n.endswith(".opus") for n in names) == 2
    assert sum(".parquet:" in n for n in names) == sum(".tar:" in n for n in names) == len(ROWS)
    marker = watermark.load_watermarker(watermark.RANDOM_WEIGHTS)
    for m in lines:
        if m[4].endswith((".mp3", ".opus")) or "/audio/" in m[4]:
            with open(m[4], "rb") as f:
                samples, rate = decode(Clip(m[4], f.read()))
            found = marker.detect(samples, rate, watermark.REFERENCE_KEY, search_step=0)
            assert m[2] == (watermark.key_id(found.key) if found.key else "-")
            assert float(m[3]) == pytest.approx(found.confidence, abs=0.005)


def test_verify_says_marked_and_exits_0_when_every_file_reads_the_key(out, monkeypatch):
    from csm_worker.watermark.message import symbols

    load = watermark.load_watermarker

    def scripted(*args, **kwargs):
        marker = load(*args, **kwargs)
        marker.msg_decoder = Scripted(symbols(watermark.REFERENCE_KEY), upstream_shape=False)
        return marker

    monkeypatch.setattr(watermark, "load_watermarker", scripted)
    result = verify(out / "audio", out / "exports" / "mp3", "--search-step", 0)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("marked    key d4d39238c9") == len(ROWS) + 2


def test_verify_refuses_what_it_cannot_read(out, tmp_path):
    weights = ("--weights", watermark.RANDOM_WEIGHTS)
    assert verify(tmp_path / "nowhere", *weights).exit_code == 2
    (tmp_path / "empty").mkdir()
    result = verify(tmp_path / "empty", *weights)
    assert result.exit_code == 2 and "no audio files" in result.output
    assert verify(out / "audio", "--key", "1,2").exit_code == 2
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    result = verify(tmp_path / "bad.wav", *weights)
    assert result.exit_code == 2 and "bad.wav" in result.output and "cannot decode" in result.output


def test_verify_reads_an_out_on_s3_as_it_reads_it_on_disk(out, raw, bucket, aws_env):
    """The same OUT uploaded under s3://BUCKET/job/: one line per file, each the same as for its local copy; the
    weights and key come from the job.json on S3 (no --weights: the hub default would be unreachable), and
    weights from an s3:// prefix load too. A single object verifies alone; a missing prefix exits 2."""
    upload_folder(raw, bucket, out, "job")
    local = verify(out, "--search-step", 0)
    remote = verify(f"s3://{bucket}/job", "--search-step", 0, "--s3-endpoint-url", aws_env)
    assert remote.exit_code == local.exit_code == 1, remote.output
    assert remote.stdout == local.stdout.replace(str(out), f"s3://{bucket}/job")
    assert f"weights {watermark.RANDOM_WEIGHTS}" in remote.stderr

    upload_folder(raw, bucket, watermark.weights.random_weights_dir(), "wm")
    one = f"s3://{bucket}/job/audio/v-b/000000.wav"
    single = verify(one, "--search-step", 0, "--weights", f"s3://{bucket}/wm", "--s3-endpoint-url", aws_env)
    assert single.exit_code == 1 and single.stdout.strip().endswith(one), single.output
    assert f"weights s3://{bucket}/wm" in single.stderr
    assert single.stdout.split()[:4] == [line for line in local.stdout.splitlines()
                                         if line.endswith("audio/v-b/000000.wav")][0].split()[:4]
    missing = verify(f"s3://{bucket}/nothing-here", "--weights", watermark.RANDOM_WEIGHTS, "--s3-endpoint-url",
                     aws_env)
    assert missing.exit_code == 2 and "no such object or prefix" in missing.output
