"""`csm-render run --export`: a real job (random:tiny on a local Ray, the CLI in a subprocess) exports each
conversation as it completes and the datasets at the end; a resumed job with a new conversation exports only it."""

from __future__ import annotations

import json

import pytest

from tests.jobs.test_cli_run import JOB_ARGS, ROWS, write_manifest

from .helpers import snapshot

pytestmark = pytest.mark.slow


def exported(out, kind, suffix):
    return sorted(p.name[: -len(suffix)] for p in (out / "exports" / kind).glob(f"*{suffix}"))


def test_run_export_then_resume_exports_only_the_new_conversation(tmp_path, csm_render):
    out = tmp_path / "out"
    first = [r for r in ROWS if r[0] in ("kitchen", "short", "intro")]
    # Random weights fail every quality check: the dataset keeps those turns only when asked to.
    result = csm_render("run", write_manifest(tmp_path / "m1", first), "--out", out, *JOB_ARGS,
                        "--export", "conversations,captions,webdataset", "--export-include-failed-qc")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exported 3 conversation(s) as they completed" in result.stderr
    assert exported(out, "conversations", ".wav") == ["intro", "kitchen", "short"]
    assert exported(out, "captions", ".vtt") == ["intro", "kitchen", "short"]
    assert "webdataset: 8 samples of 3 conversations" in result.stdout  # rendered turns only (intro's 0 is given)
    record = json.loads((out / "exports/conversations/kitchen.json").read_text())
    rows = {r["turn_index"]: r for r in json.loads("[" + ",".join(
        (out / f"commits/kitchen/{i:06d}.json").read_text() for i in range(3)) + "]")}
    assert record["num_samples"] == sum(r["num_samples"] for r in rows.values()) + (400 + 300 + 400) * 24
    before = snapshot(out / "exports")

    result = csm_render("run", write_manifest(tmp_path / "m2"), "--out", out, *JOB_ARGS, "--export",
                        "conversations,captions,webdataset", "--export-include-failed-qc")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exported 1 conversation(s) as they completed" in result.stderr
    after = snapshot(out / "exports")
    assert exported(out, "conversations", ".wav") == ["intro", "kitchen", "short", "station"]
    for name in ("conversations/kitchen.wav", "conversations/kitchen.json", "captions/short.srt"):
        assert after[name] == before[name]  # not redone
    assert "conversations: 0 exported, 4 already up to date" in result.stdout


def test_run_export_refuses_an_unknown_kind_before_writing(tmp_path, csm_render):
    out = tmp_path / "out"
    result = csm_render("run", write_manifest(tmp_path / "m"), "--out", out, *JOB_ARGS, "--export", "mp4")
    assert result.returncode == 2 and "unknown export kind 'mp4'" in result.stderr
    assert not out.exists()


def test_run_export_takes_format_loudness_and_pause_and_the_final_pass_keeps_them(tmp_path, csm_render):
    """--export-* settings reach both the exports made as conversations complete and the final pass (which
    would otherwise redo every one in export's defaults)."""
    out = tmp_path / "out"
    rows = [r for r in ROWS if r[0] == "kitchen"]
    args = ["run", write_manifest(tmp_path / "m", rows), "--out", out, *JOB_ARGS, "--export", "conversations",
            "--export-format", "flac", "--export-loudness", "-20", "--export-pause-ms", "0"]
    result = csm_render(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert exported(out, "conversations", ".flac") == ["kitchen"] and not exported(out, "conversations", ".wav")
    assert "conversations: 0 exported, 1 already up to date" in result.stdout  # the final pass: same settings
    record = json.loads((out / "exports/conversations/kitchen.json").read_text())
    assert record["loudness"]["target_lufs"] == -20.0 and abs(record["loudness"]["after_lufs"] + 20.0) < 0.5
    commits = [json.loads((out / f"commits/kitchen/{i:06d}.json").read_text()) for i in range(3)]
    assert record["num_samples"] == sum(r["num_samples"] for r in commits) + 300 * 24  # only the row's own pause


def test_run_export_settings_without_export_are_refused_before_writing(tmp_path, csm_render):
    out = tmp_path / "out"
    for export in ([], ["--export", "hf"]):  # none, or only kinds these settings do not touch
        result = csm_render("run", write_manifest(tmp_path / "m"), "--out", out, *JOB_ARGS, *export,
                            "--export-format", "mp3")
        assert result.returncode == 2 and "need --export KINDS with conversations or captions" in result.stderr
        assert not out.exists()
