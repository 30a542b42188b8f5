"""What the exports do with turns that failed the quality checks: the datasets hold only passed turns by default
and their card says how many were left out; --include-failed-qc keeps them, flagged; an episode keeps every turn
and lists the flagged ones in its JSON."""

from __future__ import annotations

import json

import datasets
import webdataset as wds
from huggingface_hub import DatasetCard

from .helpers import local_job
from .test_conversations import export

JOB = {"a": [(2, None)] * 3, "b": [(3, None)] * 2, "old": [(2, None)] * 2}
# "old"'s turns are unchecked (rendered before the checks existed): kept, like passed ones.
QC = {("a", 0): (), ("a", 1): ("too_fast",), ("a", 2): (), ("b", 0): ("max_length", "trailing_silence"),
      ("b", 1): ()}
FAILED = {("a", 1), ("b", 0)}
ALL = {(cid, i) for cid, turns in JOB.items() for i in range(len(turns))}


def hf_rows(tmp_path) -> dict:
    ds = datasets.load_dataset(str(tmp_path / "out/exports/hf"), split="train", cache_dir=str(tmp_path / "cache"))
    return {(x["conversation_id"], x["turn_index"]): x for x in ds.remove_columns("audio")}


def wds_keys(tmp_path) -> set:
    shards = sorted(str(p) for p in (tmp_path / "out/exports/webdataset").glob("shard-*.tar"))
    return {(m["conversation_id"], m["turn_index"]) for m in
            (json.loads(s["json"]) for s in wds.WebDataset(shards, shardshuffle=False))}


def test_datasets_leave_out_failed_turns_and_the_card_says_so(tmp_path):
    storage, _ = local_job(tmp_path, JOB, qc=QC)
    summary, _ = export(storage, kinds=("hf", "webdataset"))
    rows = hf_rows(tmp_path)
    assert set(rows) == ALL - FAILED and wds_keys(tmp_path) == ALL - FAILED
    assert {r["qc_status"] for k, r in rows.items() if k[0] != "old"} == {"pass"}
    assert {rows[("old", i)]["qc_status"] for i in (0, 1)} == {"unchecked"}
    assert "2 turn(s) that failed the quality checks left out" in summary.datasets["hf"]
    card = DatasetCard.load(tmp_path / "out/exports/hf/README.md")
    assert "Only turns that passed csm-render's quality checks" in card.text and "2 turn(s) that failed" in card.text
    assert card.data.dataset_info["splits"][0]["num_examples"] == len(ALL - FAILED)


def test_include_failed_qc_keeps_them_flagged_and_rebuilds_the_datasets(tmp_path):
    storage, _ = local_job(tmp_path, JOB, qc=QC)
    export(storage, kinds=("hf", "webdataset"))
    summary, _ = export(storage, kinds=("hf", "webdataset"), include_failed_qc=True)  # the setting changed
    rows = hf_rows(tmp_path)
    assert set(rows) == ALL and wds_keys(tmp_path) == ALL
    assert {k for k, r in rows.items() if r["qc_status"] == "fail"} == FAILED
    assert rows[("b", 0)]["qc_failed"] == "max_length,trailing_silence"
    assert "left out" not in summary.datasets["hf"]
    card = (tmp_path / "out/exports/hf/README.md").read_text()
    assert "Every rendered turn is included. 2 failed" in card


def test_an_episode_keeps_every_turn_and_lists_the_flagged_ones(tmp_path):
    storage, _ = local_job(tmp_path, JOB, qc=QC)
    export(storage, kinds=("conversations",))
    a = json.loads((tmp_path / "out/exports/conversations/a.json").read_text())
    b = json.loads((tmp_path / "out/exports/conversations/b.json").read_text())
    assert a["turns"] == 3 and a["qc_flagged"] == [{"turn_index": 1, "qc_failed": "too_fast"}]
    assert b["qc_flagged"] == [{"turn_index": 0, "qc_failed": "max_length,trailing_silence"}]
    assert json.loads((tmp_path / "out/exports/conversations/old.json").read_text())["qc_flagged"] == []
