"""The watermark's weights load from a folder laid out as the real `sony/silentcipher` repo (repo_layout.py), from
the hub (served here from that folder), or as `random:silentcipher`, all through load_watermarker; a folder that is
not that checkpoint is a clear error naming the file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from csm_worker.errors import BadCheckpoint, ModelLoadError
from csm_worker.watermark import RANDOM_WEIGHTS, load_watermarker
from csm_worker.watermark.weights import CHECKPOINT, FILES, random_weights_dir
from tests.csm_worker.model.test_hub_layout import COMMIT, FakeHub

from .repo_layout import DECOYS, REAL_SIZES, write_silentcipher_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return write_silentcipher_repo(tmp_path_factory.mktemp("hub") / "sony-silentcipher")


@pytest.fixture
def repo_copy(repo, tmp_path):
    return shutil.copytree(repo, tmp_path / "copy")


def test_the_networks_have_the_published_checkpoints_size(repo):
    """Parameter bytes (float32) against the real files' sizes: the real files add only the pickle's framing, so
    a layer too many or too few, or another width, misses by far more than that."""
    for name, real in REAL_SIZES.items():
        state = torch.load(repo / CHECKPOINT / name, weights_only=True)
        floats = sum(v.numel() * 4 for k, v in state.items() if v.is_floating_point())
        assert 0.93 * real < floats < real, (name, floats, real)


def test_the_repo_root_and_its_checkpoint_folder_load_the_same_weights(repo):
    a, b = load_watermarker(str(repo)), load_watermarker(str(repo / CHECKPOINT))
    assert a.weights_id == b.weights_id
    clip = np.random.default_rng(0).standard_normal(24_000).astype(np.float32) * 0.1
    assert np.array_equal(a.mark(clip, 24_000), b.mark(clip, 24_000))


def test_the_hub_fetches_only_the_44k_networks(repo, tmp_path, monkeypatch):
    import huggingface_hub

    hub = FakeHub(repo, tmp_path / "hub-cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    marker = load_watermarker("sony/silentcipher")
    snapshot = tmp_path / "hub-cache" / "snapshots" / COMMIT
    fetched = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert fetched == {f"{CHECKPOINT}/{f}" for f in FILES}
    assert not fetched & set(DECOYS)
    assert marker.weights_id == load_watermarker(str(repo)).weights_id and marker.source == "sony/silentcipher"


def test_a_dataparallel_checkpoint_loads(repo, repo_copy):
    """Checkpoints saved from torch's DataParallel name every tensor "module.<name>"; silentcipher strips it."""
    path = repo_copy / CHECKPOINT / "dec_c.ckpt"
    state = torch.load(path, weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    clip = np.random.default_rng(1).standard_normal(24_000).astype(np.float32) * 0.1
    assert np.array_equal(load_watermarker(str(repo_copy)).mark(clip, 24_000),
                          load_watermarker(str(repo)).mark(clip, 24_000))


@pytest.mark.parametrize("name", FILES)
def test_a_missing_file_is_named(repo_copy, name):
    (repo_copy / CHECKPOINT / name).unlink()
    with pytest.raises(BadCheckpoint, match=name.replace(".", r"\.")):
        load_watermarker(str(repo_copy))


def test_a_file_holding_another_network_is_named(repo_copy):
    folder = repo_copy / CHECKPOINT
    shutil.copy(folder / "enc_c.ckpt", folder / "dec_c.ckpt")
    with pytest.raises(BadCheckpoint, match=r"dec_c\.ckpt is not silentcipher's dec_c network"):
        load_watermarker(str(repo_copy))
    (folder / "dec_m_0.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(BadCheckpoint, match=r"dec_c\.ckpt|dec_m_0\.ckpt"):
        load_watermarker(str(repo_copy))


def test_the_16k_settings_are_refused(repo_copy):
    path = repo_copy / CHECKPOINT / "hparams.yaml"
    path.write_text(path.read_text().replace("message_len: 21", "message_len: 16"))
    with pytest.raises(BadCheckpoint, match="16 kHz checkpoint cannot hold a 5-byte key"):
        load_watermarker(str(repo_copy))


def test_a_folder_that_is_not_there_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_watermarker(str(tmp_path / "nowhere"))


def test_random_weights_are_built_once_and_the_same_everywhere(tmp_path, monkeypatch):
    ids = []
    for name in ("a", "b"):
        monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path / name))
        folder = random_weights_dir()
        stamp = (folder / CHECKPOINT / "enc_c.ckpt").stat().st_mtime_ns
        ids.append(load_watermarker(RANDOM_WEIGHTS).weights_id)
        assert random_weights_dir() == folder and (folder / CHECKPOINT / "enc_c.ckpt").stat().st_mtime_ns == stamp
    assert ids[0] == ids[1]
    assert {p.name for p in (folder / CHECKPOINT).iterdir()} == set(FILES)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp")]
