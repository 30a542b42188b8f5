"""The watermark through `csm-render run` as a user types it: on by default, every committed turn is the model's
audio marked by csm_worker.watermark (the same seeds rendered with `--watermark off` give the unmarked audio, and
marking that gives the file), its sha256 is the marked file's, and metadata and job record say what marked it;
`--watermark off` is recorded as off; a bad key or weights folder is refused before anything is written."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import soundfile as sf

from csm_worker.watermark import RANDOM_WEIGHTS, load_watermarker, parse_key

from .test_crash_resume import codes_in, metadata_rows, read_local_out
from .test_crash_resume import write_manifest as write_rows

pytestmark = pytest.mark.slow

JOB_ARGS = ("--model", "random:tiny", "--max-audio-length-ms", 1200, "--batch-size", 2, "--seed", 5,
            "--qc-retries", 0)
ROWS = [("wm-a", 0, 0, "Good morning to you."), ("wm-a", 1, 1, "Did you sleep at all?"),
        ("wm-b", 0, 0, "Not much, it was loud.")]
OTHER_KEY = "1,2,3,4,5"
PCM16 = 1 / 32768


@pytest.fixture(scope="module")
def outs(tmp_path_factory, csm_render):
    root = tmp_path_factory.mktemp("watermark-job")
    manifest = write_rows(root / "dialogue.parquet", ROWS)
    done = {}
    for name, extra in (("marked", ()), ("off", ("--watermark", "off")), ("other", ("--watermark-key", OTHER_KEY))):
        result = csm_render("run", manifest, "--out", root / name, *JOB_ARGS, *extra)
        assert result.returncode == 0, f"{name}: {result.stdout}\n{result.stderr}"
        files = read_local_out(root / name)
        rows = {(r["conversation_id"], r["turn_index"]): r for r in metadata_rows(files)}
        audio = {key: sf.read(io.BytesIO(files[r["audio_path"]]), dtype="float32")[0] for key, r in rows.items()}
        done[name] = {"files": files, "rows": rows, "audio": audio, "record": json.loads(files["job.json"]),
                      "root": root / name}
    return done


def test_every_turn_is_the_models_audio_marked(outs):
    """The model's own audio is its codes decoded (unclipped: a random preset's noise runs past full scale, so the
    --watermark off files are clipped); marked, then written as 16-bit PCM, it is the file."""
    from csm_worker import load_csm_1b

    marker, codec = load_watermarker(RANDOM_WEIGHTS), load_csm_1b("cpu", "random:tiny").codec
    codes = codes_in(outs["marked"]["files"])
    assert set(outs["marked"]["rows"]) == {(c, t) for c, t, _, _ in ROWS}
    for key, row in outs["marked"]["rows"].items():
        plain, marked = outs["off"]["audio"][key], outs["marked"]["audio"][key]
        assert row["watermark"] == "on" and row["watermark_key"] == "d4d39238c9"
        assert row["watermark_weights"] == RANDOM_WEIGHTS
        assert np.abs(marked - plain).max() > 10 * PCM16  # marked: not the plain audio
        model_audio = codec.decode_many([codes[key]])[0]
        expected = np.clip(marker.mark(model_audio, row["sample_rate"]), -1, 1)
        assert np.abs(marked - expected).max() <= 4 * PCM16  # but exactly the model's audio marked
        assert row["sha256"] == hashlib.sha256(outs["marked"]["files"][row["audio_path"]]).hexdigest()


def test_the_watermark_changes_no_code(outs):
    marked, plain = codes_in(outs["marked"]["files"]), codes_in(outs["off"]["files"])
    assert marked.keys() == plain.keys()
    assert all(np.array_equal(marked[k], plain[k]) for k in marked)


def test_the_job_record_names_the_weights_and_their_hash(outs):
    record = outs["marked"]["record"]["watermark"]
    assert record == {"watermark": "on", "watermark_key": "d4d39238c9", "watermark_weights": RANDOM_WEIGHTS,
                      "watermark_sha256": load_watermarker(RANDOM_WEIGHTS).weights_id}


def test_status_says_what_marked_the_job(outs):
    from jobs.status import job_status
    from jobs.storage import open_storage

    marked = job_status(open_storage(str(outs["marked"]["root"]))).text()
    assert "watermark: on, key d4d39238c9, weights random:silentcipher" in marked
    assert "watermark: off" in job_status(open_storage(str(outs["off"]["root"]))).text()


def test_off_is_recorded_as_off(outs):
    assert outs["off"]["record"]["watermark"] == {"watermark": "off"}
    assert {(r["watermark"], r["watermark_key"], r["watermark_weights"]) for r in outs["off"]["rows"].values()} \
        == {("off", None, None)}


def test_another_key_marks_with_that_key(outs):
    key = bytes(parse_key(OTHER_KEY)).hex()
    assert {r["watermark_key"] for r in outs["other"]["rows"].values()} == {key}
    for k, plain in outs["off"]["audio"].items():
        other, default = outs["other"]["audio"][k], outs["marked"]["audio"][k]
        assert np.abs(other - plain).max() > 10 * PCM16 and np.abs(other - default).max() > 2 * PCM16


@pytest.mark.parametrize("args, words", [(("--watermark-key", "1,2,3"), "expected 5 bytes"),
                                         (("--watermark-key", "zz"), "expected 5 bytes"),
                                         (("--watermark-weights", "./no-such-folder"), "no such folder")])
def test_a_bad_watermark_setting_is_refused_before_anything_is_written(tmp_path, csm_render, args, words):
    manifest = write_rows(tmp_path / "dialogue.parquet", ROWS)
    result = csm_render("run", manifest, "--out", tmp_path / "out", *JOB_ARGS, *args, cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_weights_folder_in_another_layout_is_refused_before_anything_is_written(tmp_path, csm_render):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "enc_c.ckpt").write_bytes(b"")
    manifest = write_rows(tmp_path / "dialogue.parquet", ROWS)
    result = csm_render("run", manifest, "--out", tmp_path / "out", *JOB_ARGS, "--watermark-weights", folder)
    assert result.returncode == 2 and "hparams.yaml" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
