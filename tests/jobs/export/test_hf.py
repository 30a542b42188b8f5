"""hf: `datasets.load_dataset` (the real library) on the export: every rendered turn once, decoded at 24 kHz;
bounded shards; a validation split by conversation; a dataset card the hub's parser reads."""

from __future__ import annotations

import io
from collections import Counter

import datasets
import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
from datasets.info import DatasetInfosDict
from huggingface_hub import DatasetCard

from .helpers import SR, local_job
from .test_conversations import export

JOB = {f"c{n:02d}": [(2 + (n + i) % 4, None) for i in range(3 + n % 3)] for n in range(12)}


def test_load_dataset_decodes_every_rendered_turn_once(tmp_path):
    storage, rows = local_job(tmp_path, JOB)
    summary, _ = export(storage, kinds=("hf",), max_shard_mb=0.05)
    hf = tmp_path / "out/exports/hf"
    shards = sorted(hf.glob("data/train-*.parquet"))
    assert len(shards) > 1 and "shard" in summary.datasets["hf"]
    assert all(s.stat().st_size < 0.05 * 1024 * 1024 + 60_000 for s in shards)  # bounded (plus one conversation)

    cache = str(tmp_path / "hf-cache")  # its own: datasets' shared cache may hold an earlier test's same-named files
    by_files = datasets.load_dataset("parquet", data_files=[str(s) for s in shards], split="train", cache_dir=cache)
    by_folder = datasets.load_dataset(str(hf), split="train", cache_dir=cache)
    expected = {(cid, r["turn_index"]): r for cid, rs in rows.items() for r in rs}
    for ds in (by_files, by_folder):
        assert isinstance(ds.features["audio"], datasets.Audio) and ds.features["audio"].sampling_rate == SR
        keys = Counter((x["conversation_id"], x["turn_index"]) for x in ds.select_columns(
            ["conversation_id", "turn_index"]))
        assert keys == Counter(list(expected))  # each rendered turn exactly once
    for example in by_folder:
        row = expected[(example["conversation_id"], example["turn_index"])]
        audio = example["audio"]
        assert audio["sampling_rate"] == SR and len(audio["array"]) == row["num_samples"]
        original = sf.read(io.BytesIO(storage.read_bytes(row["audio_path"])), dtype="float64")[0]
        np.testing.assert_allclose(audio["array"], original, atol=1e-6)
        assert (example["text"], example["speaker"], example["seed"], example["model"]) == \
            (row["text"], row["speaker"], row["seed"], "random:tiny")
        assert example["duration"] == row["duration_s"]
        assert example["codes_path"] == f"{storage.url}/{row['codes_path']}"


def test_validation_split_by_conversation_and_the_card(tmp_path):
    storage, rows = local_job(tmp_path, JOB)
    export(storage, kinds=("hf",), validation_fraction=0.3)
    hf = tmp_path / "out/exports/hf"
    ds = datasets.load_dataset(str(hf), cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds) == {"train", "validation"}
    train = set(ds["train"]["conversation_id"])
    valid = set(ds["validation"]["conversation_id"])
    assert train | valid == set(JOB) and not train & valid and valid  # whole conversations, both splits used

    card = DatasetCard.load(hf / "README.md")
    assert card.data.license == "apache-2.0"
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    info = next(iter(infos.values()))
    assert isinstance(info.features["audio"], datasets.Audio)
    assert {s.name: s.num_examples for s in info.splits.values()} == {"train": len(ds["train"]),
                                                                      "validation": len(ds["validation"])}
    assert "random:tiny" in card.text and "temperature 0.9" in card.text
    schema = pq.read_schema(next(hf.glob("data/train-*.parquet")))
    assert b"huggingface" in schema.metadata


def test_shards_keep_no_audio_statistics_and_few_row_groups(tmp_path):
    """Min/max statistics of the audio bytes would be whole files in the footer (held in memory until it is
    written): a 256 MB shard had 54 MB of footer."""
    storage, rows = local_job(tmp_path, JOB)
    export(storage, kinds=("hf",))
    meta = pq.ParquetFile(next((tmp_path / "out/exports/hf/data").glob("train-*.parquet"))).metadata
    assert meta.num_rows == sum(len(r) for r in rows.values()) and meta.num_row_groups == 1  # 48 rows < 100
    audio = [meta.row_group(0).column(i) for i in range(meta.num_columns)
             if meta.row_group(0).column(i).path_in_schema.startswith("audio.")]
    assert audio and all(c.statistics is None or not c.statistics.has_min_max for c in audio)
    codes_path = next(meta.row_group(0).column(i) for i in range(meta.num_columns)
                      if meta.row_group(0).column(i).path_in_schema == "codes_path")
    assert codes_path.statistics.has_min_max  # the other columns keep their own
