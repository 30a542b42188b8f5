"""Our watermark against the upstream `silentcipher` package (1.0.5, installed by .ci/run without its pins) on the
same randomly initialized weights, saved in the published checkpoint's layout: the marked audio and the messages
read back must be the ones upstream gets. At 44.1 kHz, so no resampler stands between the two."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from csm_worker.watermark import REFERENCE_KEY, REFERENCE_SDR
from csm_worker.watermark.hparams import read_hparams
from csm_worker.watermark.weights import CHECKPOINT, load_watermarker, write_random_weights

RATE = 44_100


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_random_weights(tmp_path_factory.mktemp("silentcipher"))


@pytest.fixture(scope="module")
def upstream(weights):
    server = pytest.importorskip("silentcipher.server")  # .ci/run installs it with --no-deps
    folder = weights / CHECKPOINT
    config = argparse.Namespace(**vars(read_hparams(folder / "hparams.yaml")), model_type="44.1k",
                                load_ckpt=str(folder))
    return server.Model(config, device="cpu")


@pytest.fixture(scope="module")
def ours(weights):
    return load_watermarker(str(weights))


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped by a slow syllable-rate envelope: energy that comes and goes, as speech's does."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.7 * t + seed) ** 2
    return (0.1 * envelope * rng.standard_normal(n)).astype(np.float32)


def upstream_mark(model, clip, key=REFERENCE_KEY):
    with torch.random.fork_rng(devices=[]):
        marked, _ = model.encode_wav(clip.copy(), RATE, list(key), message_sdr=REFERENCE_SDR, calc_sdr=False)
    return np.asarray(marked, dtype=np.float32)


def test_marked_audio_is_upstreams(upstream, ours):
    clips = [speechlike(1.3, 0), speechlike(2.1, 1)]
    theirs = [upstream_mark(upstream, c) for c in clips]
    mine = ours.mark_batch(clips, RATE)  # one batch of two lengths: each clip as upstream marks it alone
    for clip, a, b in zip(clips, theirs, mine):
        assert a.shape == b.shape == clip.shape
        mark = np.abs(a - clip).max()
        assert mark > 1e-4  # the mark is there (so the comparison below compares marks, not two copies)
        assert np.abs(a - b).max() < 1e-3 * mark


def test_another_key_gives_another_mark_as_upstream(upstream, ours):
    clip, key = speechlike(1.0, 2), (1, 2, 3, 4, 5)
    a, b = upstream_mark(upstream, clip, key), ours.mark(clip, RATE, key)
    assert np.abs(a - b).max() < 1e-3 * np.abs(a - clip).max()
    assert np.abs(b - ours.mark(clip, RATE)).max() > 1e-5


def test_the_message_decoders_scores_are_upstreams(upstream, ours):
    marked = upstream_mark(upstream, speechlike(2.5, 10))
    carrier, _ = upstream.stft.transform(torch.from_numpy(marked)[None])
    with torch.no_grad():
        theirs = upstream.dec_m[0](carrier[:, None])[:, 0]
    mine = ours.msg_decoder(carrier[:, None], torch.ones(1, 1, 1, carrier.shape[-1]))
    assert theirs.shape == mine.shape
    assert torch.allclose(theirs, mine, rtol=1e-4, atol=1e-4 * theirs.abs().max())


class Scripted(torch.nn.Module):
    """A message decoder that 'hears' a given symbol in each frame, so both readers read the same symbols."""

    def __init__(self, symbols: np.ndarray, upstream_shape: bool):
        super().__init__()
        self.symbols, self.upstream_shape = symbols, upstream_shape

    def forward(self, carrier, mask=None):
        frames = carrier.shape[-1]
        scores = torch.nn.functional.one_hot(torch.from_numpy(np.resize(self.symbols, frames)), 5).T.float()
        return scores[None, None] if self.upstream_shape else scores.expand(carrier.shape[0], -1, -1)


def scripts(rng) -> list[np.ndarray]:
    """Symbol sequences of every kind a reader meets: a key's cycle (started mid-cycle, with some frames misheard),
    another key's, a cycle with no end symbol, and noise with several (the '-1' path)."""
    from csm_worker.watermark.message import symbols

    def noisy(cycle, start, flips):
        seq = np.resize(np.roll(cycle, -start), 21 * 6)
        wrong = rng.choice(len(seq), flips, replace=False)
        seq[wrong] = rng.integers(0, 5, flips)
        return seq

    return [noisy(symbols(REFERENCE_KEY), 0, 0), noisy(symbols(REFERENCE_KEY), 7, 6),
            noisy(symbols((1, 2, 3, 4, 5)), 13, 10), np.resize(np.arange(1, 5), 21 * 4),
            *[rng.integers(0, 5, 21 * 3) for _ in range(6)]]


def test_messages_read_back_are_upstreams(upstream, ours, monkeypatch):
    clip = speechlike(3.2, 3)
    for script in scripts(np.random.default_rng(0)):
        monkeypatch.setattr(upstream, "dec_m", [Scripted(script, upstream_shape=True)])
        monkeypatch.setattr(ours, "msg_decoder", Scripted(script, upstream_shape=False))
        theirs = upstream.decode_wav(clip.copy(), RATE, phase_shift_decoding=False)
        mine = ours.detect(clip, RATE, key=None, search_step=0)
        if theirs["status"]:
            assert mine.key == tuple(theirs["messages"][0])
            assert mine.confidence == pytest.approx(theirs["confidences"][0], abs=1e-6)
        else:
            assert mine.key is None and not mine.marked
    monkeypatch.setattr(ours, "msg_decoder", Scripted(scripts(np.random.default_rng(0))[1], upstream_shape=False))
    assert ours.detect(clip, RATE).marked and ours.detect(clip, RATE).key == REFERENCE_KEY  # misheard frames too


def test_silence_is_left_as_it_is(upstream, ours):
    silent = np.zeros(RATE, np.float32)
    assert np.array_equal(upstream_mark(upstream, silent), silent)
    assert np.array_equal(ours.mark(silent, RATE), silent)
    assert not ours.detect(silent, RATE).marked
