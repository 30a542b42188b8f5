"""The export command as a whole: a partly failed and still running job, re-runs that change nothing, a
conversation whose files are broken, given turns from the manifest, and bad requests (exit 2, nothing written)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset as wds

from jobs.export.options import KINDS

from .helpers import SR, local_job, snapshot
from .test_conversations import export

JOB = {"ok-1": [(2, None), (3, 100)], "ok-2": [(4, None)], "broke": [(2, None), (2, None)],
       "running": [(3, None)]}


def test_a_partly_failed_running_job_exports_what_is_complete_and_says_what_it_skipped(tmp_path, csm_render):
    storage, _ = local_job(tmp_path, JOB, failed={"broke"}, unfinished={"running"})
    result = csm_render("export", storage.url, "--to", ",".join(KINDS), "--max-shard-mb", "1")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 failed conversation(s)" in result.stdout and "broke: WorkerLost" in result.stdout
    assert "skipped 1 conversation(s) not finished yet" in result.stdout and "running" in result.stdout

    exports = tmp_path / "out/exports"
    assert sorted(p.name for p in (exports / "conversations").iterdir()) == ["ok-1.json", "ok-1.wav", "ok-2.json",
                                                                              "ok-2.wav"]
    assert sorted(p.stem for p in (exports / "captions").glob("*.srt")) == ["ok-1", "ok-2"]
    keys = [s["__key__"] for s in wds.WebDataset(sorted(map(str, (exports / "webdataset").glob("*.tar"))),
                                                    shardshuffle=False)]
    assert keys == ["ok-1/000000", "ok-1/000001", "ok-2/000000"]
    hf_ids = {c for f in (exports / "hf/data").glob("*.parquet")
              for c in pq.read_table(f, columns=["conversation_id"]).column(0).to_pylist()}
    assert hf_ids == {"ok-1", "ok-2"}


def test_re_running_export_changes_nothing_and_a_new_conversation_is_added(tmp_path):
    storage, _ = local_job(tmp_path, JOB, failed={"broke"}, unfinished={"running"})
    export(storage, kinds=KINDS)
    job_before = snapshot(tmp_path / "out")
    summary, _ = export(storage, kinds=KINDS)
    assert snapshot(tmp_path / "out") == job_before  # not a byte nor an mtime
    assert summary.exported == {} and summary.unchanged == {"conversations": 2, "captions": 2}
    assert summary.datasets == {"hf": "already up to date", "webdataset": "already up to date"}

    from jobs.storage.outputs import OutputWriter  # the running conversation finishes
    rows = [OutputWriter(storage).read_commit("running", 0)]
    OutputWriter(storage).write_metadata("running", rows)
    summary, _ = export(storage, kinds=KINDS)
    assert summary.exported == {"conversations": 1, "captions": 1} and summary.unchanged["conversations"] == 2
    assert "3 conversations" in summary.datasets["webdataset"]
    after = snapshot(tmp_path / "out")
    assert after["exports/conversations/ok-1.wav"] == job_before["exports/conversations/ok-1.wav"]


def test_a_grown_job_adds_shards_and_keeps_the_old_ones_untouched(tmp_path):
    storage, rows = local_job(tmp_path, JOB, failed={"broke"}, unfinished={"running"})
    export(storage, kinds=("hf", "webdataset"))
    exports = tmp_path / "out/exports"
    shard_files = lambda: {k: v for k, v in snapshot(exports).items() if k.endswith((".parquet", ".tar"))}
    before = shard_files()

    from jobs.storage.outputs import OutputWriter  # the running conversation finishes
    OutputWriter(storage).write_metadata("running", [OutputWriter(storage).read_commit("running", 0)])
    summary, _ = export(storage, kinds=("hf", "webdataset"))
    after = shard_files()
    assert {k: after[k] for k in before} == before  # not a byte nor an mtime of the old shards
    assert len(after) == len(before) + 2  # one new shard in each dataset, holding only "running"
    new = {k for k in after if k not in before}
    assert {c for k in new if k.endswith(".parquet")
            for c in pq.read_table(exports / k, columns=["conversation_id"]).column(0).to_pylist()} == {"running"}
    assert "(1 kept from the last export)" in summary.datasets["webdataset"]
    turns = [(c, t) for f in sorted((exports / "hf/data").glob("*.parquet"))
             for c, t in zip(*pq.read_table(f, columns=["conversation_id", "turn_index"]).to_pydict().values())]
    assert sorted(turns) == [("ok-1", 0), ("ok-1", 1), ("ok-2", 0), ("running", 0)]
    keys = [s["__key__"] for s in wds.WebDataset(sorted(map(str, exports.glob("webdataset/*.tar"))),
                                                    shardshuffle=False)]
    assert sorted(keys) == ["ok-1/000000", "ok-1/000001", "ok-2/000000", "running/000000"]
    card = (exports / "hf/README.md").read_text()
    assert "4 turns of 3 conversations" in card and "num_examples: 4" in card.replace("'", "")


def test_a_recorded_shard_that_is_gone_is_written_again_though_nothing_changed(tmp_path):
    storage, _ = local_job(tmp_path, JOB, failed={"broke"}, unfinished={"running"})
    export(storage, kinds=("webdataset",))
    shard = tmp_path / "out/exports/webdataset/shard-000000.tar"
    shard.unlink()  # by hand, or by another export's clean-up
    summary, _ = export(storage, kinds=("webdataset",))
    assert "3 samples of 2 conversations in 1 shard(s)" in summary.datasets["webdataset"]
    keys = [s["__key__"] for s in wds.WebDataset(sorted(map(str, shard.parent.glob("*.tar"))), shardshuffle=False)]
    assert keys == ["ok-1/000000", "ok-1/000001", "ok-2/000000"]


def test_two_exports_do_not_write_one_dests_datasets_at_once(tmp_path, monkeypatch):
    from jobs.export import command
    from jobs.export.options import ExportRequestError
    from jobs.storage import LocalStorage
    from jobs.storage.run_lock import RunLock

    storage, _ = local_job(tmp_path, JOB, failed={"broke"})
    monkeypatch.setattr(command, "DATASETS_LOCK_WAIT_S", 0.0)
    (tmp_path / "out/exports").mkdir()
    with RunLock(LocalStorage(tmp_path / "out/exports")):  # another export, in its dataset pass
        with pytest.raises(ExportRequestError, match="another export is writing the datasets"):
            export(storage, kinds=KINDS)
    assert not list((tmp_path / "out/exports").glob("*/_export.json"))  # no dataset written
    summary, _ = export(storage, kinds=KINDS)  # once it has finished
    assert "4 samples of 3 conversations" in summary.datasets["webdataset"]


def test_an_export_that_lost_its_lease_stops_before_its_next_write(tmp_path, monkeypatch):
    """Paused past the lease's ttl, an export finds another one holds the datasets: it stops at its next write
    (here the record, after its shard), and the dataset stays as the other export leaves it."""
    from jobs.export.options import ExportRequestError
    from jobs.storage.run_lock import Lease, RunLock

    storage, _ = local_job(tmp_path, JOB, failed={"broke"})
    real, calls = RunLock.renew, []

    def taken_over_after_the_shard(self):
        calls.append(1)
        if len(calls) == 2:  # the shard's upload passed; the record's check finds a newer lease
            self.lost_to = Lease(99, "other", "host", 1, 0.0)
            return
        real(self)

    monkeypatch.setattr(RunLock, "renew", taken_over_after_the_shard)
    with pytest.raises(ExportRequestError, match="lost the datasets"):
        export(storage, kinds=("webdataset",))
    assert not (tmp_path / "out/exports/webdataset/_export.json").exists()


def test_the_dataset_card_follows_the_record_and_is_mended_when_it_does_not(tmp_path):
    storage, _ = local_job(tmp_path, JOB, failed={"broke"})
    export(storage, kinds=("hf",))
    card = tmp_path / "out/exports/hf/README.md"
    good = card.read_text()
    card.write_text(good.replace("license: apache-2.0", "license: cc-by-4.0"))  # a killed build's card
    summary, _ = export(storage, kinds=("hf",))
    assert summary.datasets["hf"] == "already up to date" and card.read_text() == good


def test_hf_rows_point_into_out_so_an_out_reached_another_way_rebuilds_hf(tmp_path):
    from jobs.storage import LocalStorage

    import shutil

    storage, _ = local_job(tmp_path, JOB, failed={"broke"})
    dest = str(tmp_path / "deliver")
    export(storage, kinds=("hf", "webdataset"), dest=dest)

    shutil.copytree(tmp_path / "out", tmp_path / "moved")  # the job's folder moved: the same conversations
    summary, _ = export(LocalStorage(tmp_path / "moved"), kinds=("hf", "webdataset"), dest=dest)
    assert summary.datasets["hf"].startswith("4 turns of 3 conversations") and "kept" not in summary.datasets["hf"]
    assert summary.datasets["webdataset"] == "already up to date"  # its samples carry no path into OUT
    paths = {p for f in (tmp_path / "deliver/hf/data").glob("*.parquet")
             for p in pq.read_table(f, columns=["codes_path"]).column(0).to_pylist()}
    assert paths and all(p.startswith(str(tmp_path / "moved") + "/") for p in paths)


def test_export_never_changes_what_the_job_wrote(tmp_path):
    storage, _ = local_job(tmp_path, JOB, failed={"broke"})
    job = {k: v for k, v in snapshot(tmp_path / "out").items()}
    export(storage, kinds=KINDS, loudness_lufs=-16.0)
    assert {k: v for k, v in snapshot(tmp_path / "out").items() if not k.startswith("exports/")} == job


def test_a_conversation_with_a_broken_turn_file_is_left_out_whole(tmp_path):
    storage, rows = local_job(tmp_path, JOB)
    (tmp_path / "out" / rows["ok-2"][0]["audio_path"]).write_bytes(b"not audio")
    summary, _ = export(storage, kinds=KINDS)
    assert set(summary.errors) == {"ok-2"} and "audio/ok-2/000000.wav" in summary.errors["ok-2"]
    assert summary.exit_code == 1
    exports = tmp_path / "out/exports"
    assert not list(exports.glob("*/ok-2*"))
    keys = {s["__key__"].split("/")[0] for s in wds.WebDataset(sorted(map(str, exports.glob("webdataset/*.tar"))),
                                                                  shardshuffle=False)}
    assert keys == {"ok-1", "broke", "running"}


def test_include_given_takes_the_voice_prompt_from_the_manifest(tmp_path):
    voice = (0.3 * np.sin(2 * np.pi * 200 * np.arange(12_000) / SR)).astype(np.float32)
    sf.write(tmp_path / "voice.wav", voice, SR, subtype="PCM_16")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"conversation_id": ["v", "v", "v"], "turn_index": pa.array([0, 1, 2], pa.int32()),
                             "speaker": pa.array([0, 1, 0], pa.int32()), "text": ["Hi there.", "Hello.", "Bye."],
                             "audio": ["voice.wav", None, None], "pause_ms": pa.array([50, None, None], pa.int32())}),
                   manifest)
    storage, rows = local_job(tmp_path, {"v": [(9, None), (2, None), (2, None)]})
    os.remove(tmp_path / "out" / "commits/v/000000.json")  # turn 0 is given: the job never wrote it
    from jobs.storage.outputs import OutputWriter
    OutputWriter(storage).write_metadata("v", rows["v"][1:])

    export(storage, kinds=("conversations", "captions"), fade_ms=0)
    without = json.loads((tmp_path / "out/exports/captions/v.json").read_text())["turns"]
    assert [t["turn_index"] for t in without] == [1, 2]

    export(storage, kinds=("conversations", "captions"), fade_ms=0, include_given=True, manifests=(str(manifest),))
    turns = json.loads((tmp_path / "out/exports/captions/v.json").read_text())["turns"]
    assert [(t["turn_index"], t["given"]) for t in turns] == [(0, True), (1, False), (2, False)]
    assert turns[1]["start_sample"] == 12_000 + 50 * 24  # the given recording, then its own pause
    audio = sf.read(str(tmp_path / "out/exports/conversations/v.wav"), dtype="int16")[0]
    np.testing.assert_array_equal(audio[:12_000], sf.read(tmp_path / "voice.wav", dtype="int16")[0])


@pytest.mark.parametrize("args,message", [
    (["--to", "podcast"], "unknown export kind 'podcast'"),
    (["--dest", "{out}/audio/x"], "is inside this job's output"),
    (["--dest", "{other}/exports"], "is inside another job's output"),
    (["--include-given"], "--include-given needs the job's manifest"),
])
def test_bad_requests_exit_2_and_write_nothing(tmp_path, csm_render, args, message):
    storage, _ = local_job(tmp_path, JOB)
    other, _ = local_job(tmp_path / "other", {"x": [(1, None)]})
    before = snapshot(tmp_path)
    result = csm_render("export", storage.url, *[a.format(out=storage.url, other=other.url) for a in args])
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert snapshot(tmp_path) == before


def test_an_out_that_is_not_a_job_exits_2(tmp_path, csm_render):
    (tmp_path / "notajob").mkdir()
    result = csm_render("export", tmp_path / "notajob")
    assert result.returncode == 2 and "is not a job's output (no job.json)" in result.stderr
    assert os.listdir(tmp_path / "notajob") == []


def test_new_run_clears_the_exports_made_from_the_run_it_discards(tmp_path):
    from jobs.runner import clear_previous_run

    storage, _ = local_job(tmp_path, JOB)
    export(storage, kinds=("captions",))
    other = tmp_path / "elsewhere"
    export(storage, kinds=("captions",), dest=str(other))
    clear_previous_run(storage)
    assert not storage.list("exports/") and not storage.list("metadata/")
    assert list(other.glob("captions/*.srt"))  # an export outside OUT is the user's
