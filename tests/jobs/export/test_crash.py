"""An export killed part-way leaves no file half written under its final name and no record for what it did not
finish; the next export completes it, redoing only that."""

from __future__ import annotations

import json

import pytest
import webdataset as wds

import jobs.export.per_conversation as per_conversation
import jobs.export.shards as shards
from jobs.export.options import KINDS

from .helpers import local_job, snapshot
from .test_conversations import export
from .test_hf import JOB


class Killed(BaseException):
    """Stands for the process being killed (not an Exception: nothing may catch it)."""


def test_killed_while_encoding_then_resumed(tmp_path, monkeypatch):
    storage, _ = local_job(tmp_path, JOB)
    real, calls = per_conversation.write_audio, []

    def dies_on_the_third(path, samples, fmt, *tags):
        calls.append(path)
        if len(calls) == 3:
            with open(path, "wb") as f:
                f.write(b"RIFF half")  # the scratch file, half written
            raise Killed()
        real(path, samples, fmt, *tags)

    monkeypatch.setattr(per_conversation, "write_audio", dies_on_the_third)
    with pytest.raises(Killed):
        export(storage, kinds=("conversations",))
    folder = tmp_path / "out/exports/conversations"
    assert sorted(p.name for p in folder.iterdir()) == ["c00.json", "c00.wav", "c01.json", "c01.wav"]

    first = snapshot(folder)
    monkeypatch.setattr(per_conversation, "write_audio", real)
    summary, _ = export(storage, kinds=("conversations",))
    assert summary.exported["conversations"] == len(JOB) - 2 and summary.unchanged["conversations"] == 2
    after = snapshot(folder)
    assert all(after[name] == first[name] for name in first)


def killed_on_the_second_commit(monkeypatch):
    real, uploads = shards.ShardSeries.commit, []

    def dies_on_the_second(self):
        uploads.append(1)
        if len(uploads) == 2:
            raise Killed()
        real(self)

    monkeypatch.setattr(shards.ShardSeries, "commit", dies_on_the_second)
    return real


def test_killed_between_shards_keeps_the_old_dataset_whole_then_rebuilds(tmp_path, monkeypatch):
    storage, rows = local_job(tmp_path, JOB)
    export(storage, kinds=("webdataset",), max_shard_mb=0.05)
    folder = tmp_path / "out/exports/webdataset"
    record = json.loads((folder / "_export.json").read_text())

    from jobs.storage.outputs import OutputWriter  # a conversation is re-rendered, and the shard size changes:
    OutputWriter(storage).write_metadata("c03", rows["c03"][:2])  # the dataset is rebuilt whole
    real = killed_on_the_second_commit(monkeypatch)
    with pytest.raises(Killed):
        export(storage, kinds=("webdataset",), max_shard_mb=0.04)
    assert json.loads((folder / "_export.json").read_text()) == record  # the record still names the old build
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]

    monkeypatch.setattr(shards.ShardSeries, "commit", real)
    summary, _ = export(storage, kinds=("webdataset",), max_shard_mb=0.04)
    samples = list(wds.WebDataset(sorted(map(str, folder.glob("shard-*.tar"))), shardshuffle=False))
    assert len(samples) == sum(len(r) for r in rows.values()) - (len(rows["c03"]) - 2)
    assert "samples of 12 conversations" in summary.datasets["webdataset"]
    assert "kept" not in summary.datasets["webdataset"]


def test_killed_while_adding_shards_to_a_grown_dataset_leaves_no_duplicate_after_the_next_export(tmp_path,
                                                                                                 monkeypatch):
    """Two conversations re-rendered (new metadata) in a kept dataset: their shards are written anew under new
    numbers; killed after the first, the record still names the old shards (all still there), and the next
    export removes the orphan it left, so every turn is in the dataset once, with its new metadata."""
    storage, rows = local_job(tmp_path, JOB)
    export(storage, kinds=("webdataset",), max_shard_mb=0.2)
    folder = tmp_path / "out/exports/webdataset"
    record = json.loads((folder / "_export.json").read_text())
    first, last = record["shards"][0]["conversations"][0][0], record["shards"][-1]["conversations"][-1][0]

    from jobs.storage.outputs import OutputWriter
    for cid in (first, last):
        OutputWriter(storage).write_metadata(cid, [{**r, "text": r["text"] + " Again."} for r in rows[cid]])
    real = killed_on_the_second_commit(monkeypatch)
    with pytest.raises(Killed):
        export(storage, kinds=("webdataset",), max_shard_mb=0.2)
    assert json.loads((folder / "_export.json").read_text()) == record
    assert all((folder.parent / e["key"]).exists() for e in record["shards"])

    monkeypatch.setattr(shards.ShardSeries, "commit", real)
    summary, _ = export(storage, kinds=("webdataset",), max_shard_mb=0.2)
    samples = list(wds.WebDataset(sorted(map(str, folder.glob("shard-*.tar"))), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(f"{c}/{i:06d}" for c, r in rows.items() for i in range(len(r)))
    again = {s["__key__"].split("/")[0] for s in samples if json.loads(s["json"])["text"].endswith(" Again.")}
    assert again == {first, last}
    assert "kept from the last export" in summary.datasets["webdataset"]


def test_an_old_temporary_file_of_a_killed_export_is_removed_a_fresh_one_kept(tmp_path):
    import os
    import time

    storage, _ = local_job(tmp_path, {"a": [(1, None)]})
    folder = tmp_path / "out/exports/conversations"
    folder.mkdir(parents=True)
    old, fresh = folder / ".tmp-a.wav-dead", folder / ".tmp-b.wav-live"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    export(storage, kinds=("conversations",))
    assert not old.exists() and fresh.exists()


def test_old_temporary_files_are_removed_only_in_the_export_folders_of_a_dest_above_out(tmp_path):
    import os
    import time

    storage, _ = local_job(tmp_path, {"a": [(1, None)]})
    job_temp, export_temp = tmp_path / "out/audio/.tmp-x-old", tmp_path / "conversations/.tmp-a.wav-dead"
    export_temp.parent.mkdir()
    for path in (job_temp, export_temp):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    export(storage, kinds=("conversations",), dest=str(tmp_path))  # DEST holds OUT
    assert job_temp.exists() and not export_temp.exists()


def samples_in(folder):
    return sorted(s["__key__"] for s in wds.WebDataset(sorted(map(str, folder.glob("shard-*.tar"))),
                                                        shardshuffle=False))


def rerender(storage, rows, cid):
    from jobs.storage.outputs import OutputWriter

    OutputWriter(storage).write_metadata(cid, [{**r, "text": r["text"] + " Again."} for r in rows[cid]])


def test_killed_after_the_record_the_next_export_removes_the_shards_it_no_longer_names(tmp_path, monkeypatch):
    import jobs.export.command as command

    storage, rows = local_job(tmp_path, JOB)
    export(storage, kinds=("webdataset",), max_shard_mb=0.2)
    folder = tmp_path / "out/exports/webdataset"
    want = samples_in(folder)
    rerender(storage, rows, json.loads((folder / "_export.json").read_text())["shards"][0]["conversations"][0][0])
    real = command.remove_stale

    def killed(*args):
        raise Killed()

    monkeypatch.setattr(command, "remove_stale", killed)
    with pytest.raises(Killed):
        export(storage, kinds=("webdataset",), max_shard_mb=0.2)
    assert len(samples_in(folder)) > len(want)  # the old shard is still there beside its rewrite
    monkeypatch.setattr(command, "remove_stale", real)
    summary, _ = export(storage, kinds=("webdataset",), max_shard_mb=0.2)
    assert summary.datasets["webdataset"] == "already up to date" and samples_in(folder) == want


@pytest.mark.parametrize("change", ["every_shard", "settings"])
def test_a_killed_rebuild_never_overwrites_a_recorded_shard(tmp_path, monkeypatch, change):
    """Nothing kept (a conversation changed in every shard), or other settings: the rebuild's shards are numbered
    after every file there. Killed after its first shard, the old record still describes the files on disk, and
    an export with the old settings afterwards keeps what it may and loses nothing."""
    storage, rows = local_job(tmp_path, JOB)
    export(storage, kinds=("webdataset",), max_shard_mb=0.2)
    folder = tmp_path / "out/exports/webdataset"
    record = json.loads((folder / "_export.json").read_text())
    shard0 = (folder / "shard-000000.tar").read_bytes()
    for e in record["shards"] if change == "every_shard" else record["shards"][-1:]:
        rerender(storage, rows, e["conversations"][0][0])
    real = killed_on_the_second_commit(monkeypatch)
    with pytest.raises(Killed):
        export(storage, kinds=("webdataset",), max_shard_mb=0.2 if change == "every_shard" else 0.1)
    assert (folder / "shard-000000.tar").read_bytes() == shard0
    assert json.loads((folder / "_export.json").read_text()) == record
    monkeypatch.setattr(shards.ShardSeries, "commit", real)
    export(storage, kinds=("webdataset",), max_shard_mb=0.2)
    assert samples_in(folder) == sorted(f"{c}/{i:06d}" for c, r in rows.items() for i in range(len(r)))
