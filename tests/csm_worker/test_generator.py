"""The seed's Python API (`load_csm_1b(...).generate(...)`) on random:tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_worker import RenderError, Segment

SAMPLES_PER_MS = 24  # 24 kHz


def test_generate_returns_mono_audio_within_the_length_limit(gen):
    audio = gen.generate("Hello from Sesame.", 0, max_audio_length_ms=480, seed=1)
    assert isinstance(audio, torch.Tensor) and audio.dtype == torch.float32 and audio.ndim == 1
    assert gen.sample_rate == 24_000
    assert 0 < len(audio) <= 480 * SAMPLES_PER_MS and len(audio) % 1920 == 0
    assert torch.isfinite(audio).all() and audio.abs().max() > 0
    again = gen.generate("Hello from Sesame.", 0, max_audio_length_ms=480, seed=1)
    assert torch.equal(audio, again)


def test_generate_never_exceeds_a_limit_that_is_not_a_whole_frame(gen):
    audio = gen.generate("Hello", 0, max_audio_length_ms=500, seed=1, topk=1)
    assert len(audio) <= 500 * SAMPLES_PER_MS


def test_context_segments_with_audio_are_used(gen, noise_audio):
    context = [
        Segment(1, "A voice as a torch tensor.", torch.from_numpy(noise_audio(3, seed=1))),
        Segment(0, "And one as numpy.", noise_audio(2, seed=2)),
    ]
    with_context = gen.generate("Reply.", 1, context=context, max_audio_length_ms=320, topk=1, seed=0)
    without = gen.generate("Reply.", 1, context=[], max_audio_length_ms=320, topk=1, seed=0)
    assert with_context.shape == without.shape == (4 * 1920,)
    assert not torch.equal(with_context, without), "the context made no difference"
    # The same context as numpy instead of torch gives the same result (and hits the codec's cache).
    as_numpy = [Segment(s.speaker, s.text, np.asarray(s.audio)) for s in context]
    assert torch.equal(gen.generate("Reply.", 1, context=as_numpy, max_audio_length_ms=320, topk=1, seed=0),
                       with_context)


def test_global_torch_seed_makes_unseeded_calls_repeatable(gen):
    torch.manual_seed(1234)
    a = gen.generate("Same again", 0, max_audio_length_ms=320)
    torch.manual_seed(1234)
    b = gen.generate("Same again", 0, max_audio_length_ms=320)
    torch.manual_seed(4321)
    c = gen.generate("Same again", 0, max_audio_length_ms=320)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bad_context_audio_raises_render_error(gen):
    stereo = torch.zeros(2, 1920)
    with pytest.raises(RenderError, match="1-D"):
        gen.generate("Hi", 0, context=[Segment(0, "Stereo", stereo)], max_audio_length_ms=160, seed=0)


def test_generate_marks_its_clips_as_the_reference_does_and_can_be_told_not_to(gen):
    """generate() returns the watermarked clip (random weights with a random preset): the unmarked render,
    marked with the reference key; watermark=False returns that unmarked render, another key another mark."""
    from csm_worker import load_csm_1b
    from csm_worker.watermark import RANDOM_WEIGHTS, REFERENCE_KEY, load_watermarker

    assert gen.watermark_weights == RANDOM_WEIGHTS and gen.watermarker is not None
    marked = gen.generate("Hello from Sesame.", 0, max_audio_length_ms=480, seed=1).numpy()
    plain_gen = load_csm_1b("cpu", "random:tiny", watermark=False)
    assert plain_gen.watermarker is None
    plain = plain_gen.generate("Hello from Sesame.", 0, max_audio_length_ms=480, seed=1).numpy()
    expected = load_watermarker(RANDOM_WEIGHTS).mark(plain, 24_000, REFERENCE_KEY)
    assert not np.array_equal(marked, plain)
    np.testing.assert_allclose(marked, expected, atol=1e-6)
    other = load_csm_1b("cpu", "random:tiny", watermark=RANDOM_WEIGHTS, watermark_key=(1, 2, 3, 4, 5))
    assert not np.allclose(other.generate("Hello from Sesame.", 0, max_audio_length_ms=480, seed=1).numpy(),
                           marked, atol=1e-6)
