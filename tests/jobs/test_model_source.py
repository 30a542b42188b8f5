"""`--model s3://...`: a model folder in the hub format on S3 (moto's HTTP server), downloaded once per node into
the cache folder and loaded through the same path as any local folder."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from csm_worker import load_csm_1b
from csm_worker.model import presets
from csm_worker.errors import ModelLoadError
from jobs.model_source import local_model

from .conftest import upload_folder


@pytest.fixture
def model_uri(raw, bucket, csm_cache):
    """The random:tiny preset uploaded file by file under s3://bucket/models/tiny/."""
    folder = presets.preset_dir("random:tiny")
    return upload_folder(raw, bucket, folder, "models/tiny"), folder


def test_s3_model_loads_with_the_same_weights_as_its_source(model_uri, monkeypatch, tmp_path):
    uri, folder = model_uri
    monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path / "node-cache"))
    local = local_model(uri)
    assert local.startswith(str(tmp_path / "node-cache"))
    loaded = load_csm_1b("cpu", local).loaded
    assert loaded.weights_hash == load_csm_1b("cpu", str(folder)).loaded.weights_hash


def test_downloaded_once_per_node_even_by_concurrent_workers(model_uri, raw, bucket, monkeypatch, tmp_path):
    uri, _ = model_uri
    monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path / "node-cache"))
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(local_model(uri))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(paths)) == 1 and len(paths) == 3
    # The copy is complete and reused: with the objects gone, it is still served (no second download).
    for obj in raw.list_objects_v2(Bucket=bucket, Prefix="models/")["Contents"]:
        raw.delete_object(Bucket=bucket, Key=obj["Key"])
    assert local_model(uri) == paths[0]
    assert [p.name for p in (tmp_path / "node-cache" / "s3-models").iterdir() if p.name.startswith(".tmp-")] == []


def test_the_driver_fetches_only_the_tokenizer(model_uri, monkeypatch, tmp_path):
    uri, _ = model_uri
    monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path / "driver-cache"))
    local = local_model(uri, tokenizer_only=True)
    names = {p.name for p in Path(local).rglob("*") if p.is_file()}
    assert "config.json" in names and any(n.startswith("tokenizer") for n in names)
    assert not any(n.endswith(".safetensors") for n in names)
    assert local != local_model(uri)  # the full copy is another folder


def test_prefix_without_a_model_is_a_clear_error(raw, bucket, monkeypatch, tmp_path, aws_env):
    monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path / "cache"))
    raw.put_object(Bucket=bucket, Key="models/empty/readme.txt", Body=b"nothing here")
    with pytest.raises(ModelLoadError, match=f"s3://{bucket}/models/empty has no config.json"):
        local_model(f"s3://{bucket}/models/empty")
    assert [p for p in (tmp_path / "cache" / "s3-models").iterdir() if p.is_dir()] == []  # no copy, no temp folder


def test_other_models_pass_through():
    assert local_model("random:tiny") == "random:tiny"
    assert local_model("sesame/csm-1b") == "sesame/csm-1b"


def test_a_copy_of_the_hub_repo_downloads_only_the_loaded_shards(raw, bucket, csm_cache, monkeypatch, tmp_path):
    """An S3 copy of sesame/csm-1b as laid out on the hub (tests/hub_layout.py): its original-layout
    model.safetensors and ckpt.pt (6.2 GB each in the real repo) and the prompts are never fetched."""
    from tests.hub_layout import INDEX, ORIGINAL_FILES, SHARDS, write_hub_layout

    repo = write_hub_layout(presets.preset_dir("random:tiny"), tmp_path / "sesame-csm-1b")
    for path in repo.rglob("*"):
        if path.is_file():
            raw.put_object(Bucket=bucket, Key=f"models/csm-1b/{path.relative_to(repo).as_posix()}",
                           Body=path.read_bytes())
    monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path / "node-cache"))
    local = Path(local_model(f"s3://{bucket}/models/csm-1b/"))
    names = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert set(SHARDS) | {INDEX, "config.json", "tokenizer.json"} <= names
    assert not names & set(ORIGINAL_FILES) and not any(n.startswith("prompts/") for n in names)
    loaded = load_csm_1b("cpu", str(local)).loaded
    assert loaded.weights_hash == load_csm_1b("cpu", str(repo)).loaded.weights_hash
