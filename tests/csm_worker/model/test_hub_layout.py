"""Loading a folder laid out as the real hub repo `sesame/csm-1b` (tests/hub_layout.py): only the transformers
shards are downloaded, hashed and loaded; incomplete or original-layout folders are refused before any work."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from csm_worker import ModelLoadError, load_csm_1b, load_pretrained
from csm_worker.model import loading, presets
from csm_worker.model.checkpoint import weight_files
from tests.hub_layout import INDEX, ORIGINAL_FILES, SHARDS, write_hub_layout

from .test_presets import assert_same_weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory, cache_dir):
    return write_hub_layout(presets.preset_dir("random:tiny"), tmp_path_factory.mktemp("sesame-csm-1b"))


@pytest.fixture
def repo_copy(hub_repo, tmp_path):
    return Path(shutil.copytree(hub_repo, tmp_path / "copy"))


def test_the_shards_are_loaded_and_render_exactly_as_the_preset(hub_repo, gen):
    assert weight_files(hub_repo) == list(SHARDS)
    loaded = load_pretrained(str(hub_repo))
    assert_same_weights(loaded.hf, gen.loaded.hf)
    # Real weights are marked with the published watermark, which is not reachable here: the preset's random one.
    assert load_csm_1b("cpu", str(hub_repo)).watermark_weights == "sony/silentcipher"
    other = load_csm_1b("cpu", str(hub_repo), watermark="random:silentcipher")
    torch.set_num_threads(1)
    ours = other.generate("Hello there.", 0, max_audio_length_ms=400, seed=3)
    theirs = gen.generate("Hello there.", 0, max_audio_length_ms=400, seed=3)
    assert torch.equal(ours, theirs)


class FakeHub:
    """`snapshot_download` served from a local folder: copies what `allow_patterns` selects into a snapshot
    folder named by the commit, as the hub cache does, and records what was asked for."""

    def __init__(self, repo: Path, cache: Path):
        self.repo, self.cache, self.calls = repo, cache, []

    def __call__(self, repo_id, revision=None, allow_patterns=None, **_):
        self.calls.append((repo_id, revision, list(allow_patterns)))
        snapshot = self.cache / "snapshots" / COMMIT
        for path in self.repo.rglob("*"):
            rel = path.relative_to(self.repo).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, snapshot / rel)
        return str(snapshot)


def test_the_hub_download_fetches_only_what_is_loaded(hub_repo, tmp_path, monkeypatch, gen):
    import huggingface_hub

    hub = FakeHub(hub_repo, tmp_path / "hub-cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    folder = loading.resolve_model_dir("sesame/csm-1b")
    fetched = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(SHARDS) | {INDEX, "config.json", "tokenizer.json", "chat_template.jinja"} <= fetched
    assert not fetched & set(ORIGINAL_FILES), "the original-layout copies of the weights were downloaded"
    assert not any(name.startswith("prompts/") for name in fetched)
    # The weights are fetched from the very commit whose config named them.
    assert [c[1] for c in hub.calls] == [None, COMMIT]
    assert_same_weights(load_pretrained("sesame/csm-1b").hf, gen.loaded.hf)


def test_weights_hash_covers_the_loaded_files_only(repo_copy):
    before = loading.weights_hash(repo_copy)
    (repo_copy / "model.safetensors").write_bytes(b"other bytes entirely")
    (repo_copy / "ckpt.pt").unlink()
    assert loading.weights_hash(repo_copy) == before, "files that are not loaded changed the hash"
    shard = repo_copy / SHARDS[1]
    tensors = load_file(shard)
    name = next(iter(tensors))
    tensors[name] = torch.zeros(tensors[name].numel() + 1)
    save_file(tensors, shard)
    assert loading.weights_hash(repo_copy) != before


def test_a_folder_with_only_the_original_layout_is_refused(repo_copy):
    for name in (*SHARDS, INDEX):
        (repo_copy / name).unlink()
    with pytest.raises(ModelLoadError, match=r"only the original .*ckpt\.pt, model\.safetensors.*hf download"):
        load_pretrained(str(repo_copy))


def test_the_original_layout_under_a_loaded_name_is_refused(repo_copy):
    """A config without `transformers_weights` loads model.safetensors: the original one there is no CSM model
    transformers can fill."""
    config = json.loads((repo_copy / "config.json").read_text())
    del config["transformers_weights"]
    (repo_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is in the original .* layout"):
        load_pretrained(str(repo_copy))


def test_a_missing_shard_names_the_file(repo_copy):
    (repo_copy / SHARDS[1]).unlink()
    with pytest.raises(ModelLoadError, match=rf"lacks weight file\(s\) {SHARDS[1]}.*incomplete"):
        load_pretrained(str(repo_copy))


def test_a_missing_index_names_it(repo_copy):
    (repo_copy / INDEX).unlink()
    with pytest.raises(ModelLoadError, match=rf"names {INDEX} .* no such file"):
        load_pretrained(str(repo_copy))


def _edit_shard(folder: Path, edit) -> None:
    shard = folder / SHARDS[0]
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})


def test_missing_tensors_are_an_error_naming_them(repo_copy):
    key = "backbone_model.layers.1.mlp.up_proj.weight"
    _edit_shard(repo_copy, lambda t: t.pop(key))
    with pytest.raises(ModelLoadError, match=rf"1 missing keys \(first: {key}\)"):
        load_pretrained(str(repo_copy))


def test_unexpected_tensors_are_an_error_naming_them(repo_copy):
    _edit_shard(repo_copy, lambda t: t.update({"backbone_model.layers.9.extra.weight": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match=r"unexpected keys \(first: backbone_model\.layers\.9\.extra\.weight"):
        load_pretrained(str(repo_copy))


def test_tensors_of_another_shape_are_an_error(repo_copy):
    key = "backbone_model.layers.0.mlp.up_proj.weight"
    _edit_shard(repo_copy, lambda t: t.update({key: torch.zeros(t[key].shape[0] + 1, t[key].shape[1])}))
    with pytest.raises(ModelLoadError, match=r"up_proj"):
        load_pretrained(str(repo_copy))
