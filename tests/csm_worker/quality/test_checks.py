"""The always-on checks (`csm_worker.quality.checks`) on synthetic turns: speech-like bursts at a natural
syllable rate, with the failure each check exists for built in (a long pause, a silent tail, a turn too short or
too long for its text, clipping, NaN), and the same turn without it passing."""

from __future__ import annotations

import numpy as np
import pytest

from csm_worker.quality.checks import CHECKS, Thresholds, check_turn, voiced_frames

SR = 24_000
TEXT = "The quick brown fox jumps over the lazy dog."  # 35 letters: ~3 s at 12 letters a second


def speech(seconds: float, level: float = 0.3, seed: int = 0) -> np.ndarray:
    """Syllable-like bursts: a voiced tone with formant-ish noise, 4 syllables a second, short gaps between."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0.15, 1.0)
    voice = np.sin(2 * np.pi * 140 * t) + 0.3 * rng.standard_normal(len(t))
    return (level * envelope * voice / 1.3).astype(np.float32)


def silence(seconds: float, seed: int = 1) -> np.ndarray:
    return (1e-4 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def failed(samples, text=TEXT, end_reason="eos", **thresholds) -> tuple[str, ...]:
    return check_turn(samples, SR, text, end_reason, Thresholds(**thresholds)).failed


def test_a_natural_turn_passes_every_check():
    assert failed(np.concatenate([silence(0.2), speech(3.0), silence(0.4)])) == ()


def test_a_quiet_voice_is_not_silence():
    assert failed(speech(3.0, level=0.005)) == ()


def test_running_to_the_length_limit_fails():
    assert failed(speech(3.0), end_reason="max_length") == ("max_length",)


def test_a_turn_of_silence_fails():
    assert "mostly_silence" in failed(np.concatenate([silence(4.0), speech(0.3), silence(4.0)]))


def test_a_long_pause_inside_the_turn_fails_and_a_short_one_does_not():
    assert failed(np.concatenate([speech(1.5), silence(3.0), speech(1.5)])) == ("inner_silence",)
    assert failed(np.concatenate([speech(1.5), silence(0.8), speech(1.5)])) == ()


def test_a_long_silent_tail_fails():
    assert failed(np.concatenate([speech(3.0), silence(3.0)])) == ("trailing_silence",)


def test_a_turn_far_too_short_for_its_text_fails():
    # Half a second of speech for 35 letters: most of the words were skipped.
    assert failed(speech(0.5)) == ("too_fast",)


def test_a_turn_far_too_long_for_its_text_fails():
    # Twelve seconds of speech for "Hi there.": babble or a runaway tail.
    assert failed(speech(12.0), text="Hi there.") == ("too_slow",)


def test_short_texts_skip_the_rate_checks():
    assert failed(speech(4.0), text="Hm.") == ()


def test_clipping_fails():
    assert failed(np.clip(speech(3.0) * 20, -1, 1)) == ("clipping",)


def test_non_finite_samples_fail_before_anything_is_measured():
    samples = speech(3.0)
    samples[100] = np.nan
    result = check_turn(samples, SR, TEXT, "max_length")
    assert result.failed == ("non_finite", "max_length") and not result.passed


def test_thresholds_are_the_callers():
    turn = np.concatenate([speech(1.5), silence(3.0), speech(1.5)])
    assert failed(turn, max_inner_silence_s=4.0) == ()


def test_measures_say_what_was_found():
    result = check_turn(np.concatenate([speech(2.0), silence(1.0)]), SR, TEXT, "eos")
    m = result.measures
    assert m["duration_s"] == pytest.approx(3.0)
    assert m["voiced_s"] == pytest.approx(2.0, abs=0.1)
    assert m["trailing_silence_s"] == pytest.approx(1.0, abs=0.05)
    assert m["letters"] == 35


def test_voiced_frames_are_20_ms_and_relative_to_the_loudest():
    frames = voiced_frames(np.concatenate([silence(0.1), speech(0.1)]), SR)
    assert len(frames) == 10 and not frames[:5].any() and frames[5:].sum() >= 4


def test_every_check_has_a_name_in_order():
    assert len(set(CHECKS)) == len(CHECKS) and CHECKS[0] == "non_finite"
