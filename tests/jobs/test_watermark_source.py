"""`--watermark-weights s3://...`: the silentcipher repo's layout on S3 (moto's HTTP server), fetched once per
node by pattern (only the 44.1 kHz networks, not the optimizer state or the 16 kHz model) and loaded as any local
copy is; the job records the prefix it came from. And the driver's check before any work."""

from __future__ import annotations

import pytest

from csm_worker.errors import ModelLoadError
from csm_worker.watermark import load_watermarker
from jobs.watermark_options import WatermarkOptions, check_weights_source, make_finalizer
from tests.csm_worker.watermark.repo_layout import DECOYS, write_silentcipher_repo

from .conftest import upload_folder


@pytest.fixture
def weights_uri(raw, bucket, tmp_path):
    repo = write_silentcipher_repo(tmp_path / "sony-silentcipher")
    return upload_folder(raw, bucket, repo, "weights/silentcipher"), repo


def test_s3_weights_load_as_their_local_copy_and_fetch_only_the_networks(weights_uri, monkeypatch, tmp_path):
    uri, repo = weights_uri
    monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path / "node-cache"))
    finalize, marker = make_finalizer(WatermarkOptions(weights=uri), "random:tiny")
    assert finalize is not None and marker.source == uri
    assert marker.weights_id == load_watermarker(str(repo)).weights_id
    fetched = {p.relative_to(tmp_path / "node-cache").as_posix() for p in (tmp_path / "node-cache").rglob("*")
               if p.is_file()}
    assert not any(name.endswith(decoy) for name in fetched for decoy in DECOYS), fetched
    assert WatermarkOptions(weights=uri).record("random:tiny")["watermark_weights"] == uri


def test_off_loads_nothing():
    assert make_finalizer(WatermarkOptions(enabled=False), "sesame/csm-1b") == (None, None)


def test_the_driver_refuses_weights_it_cannot_have_before_any_work(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(ModelLoadError, match="watermark weights sony/silentcipher: .*--watermark-weights"):
        check_weights_source(WatermarkOptions(), "sesame/csm-1b")  # real weights: the published checkpoint
    check_weights_source(WatermarkOptions(), "random:tiny")  # a preset: random weights, built here
    check_weights_source(WatermarkOptions(enabled=False), "sesame/csm-1b")  # off: nothing to have
