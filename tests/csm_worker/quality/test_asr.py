"""The ASR check: normalizing and scoring, transformers' pipeline over a recognizer built here, the judge that
fails a turn whose transcript is far from its text, and a real recognizer (pocketsphinx) on real speech."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from csm_worker.errors import ModelLoadError
from csm_worker.quality.asr import PipelineRecognizer, Scorer, asr_model_dir, to_rate
from csm_worker.quality.checks import TurnQuality
from csm_worker.quality.judge import asr_judge

from .asr_models import TURN_RATE, Pocketsphinx, have_espeak, speak, tiny_ctc


def turn(text: str, audio: np.ndarray, end_reason: str = "eos"):
    return SimpleNamespace(text=text, audio=audio, sample_rate=TURN_RATE, end_reason=end_reason)


class Heard:
    """A recognizer that hears what it is told to: the judge's plumbing without a model."""

    sample_rate = 16_000

    def __init__(self, transcripts):
        self.transcripts = list(transcripts)
        self.calls = []

    def transcribe(self, clips):
        self.calls.append([len(c) for c in clips])
        return self.transcripts[:len(clips)]


# -- scoring ----------------------------------------------------------------------------------------------------

def test_normalizing_forgives_case_punctuation_and_spelled_numbers():
    s = Scorer().score("Hello, Mr. Smith! I have twenty-two apples.", "hello mister smith i have 22 apples")
    assert s.cer == 0 and s.wer == 0


def test_missing_words_and_wrong_words_score_high():
    scorer = Scorer()
    half = scorer.score("the quick brown fox jumps over the lazy dog", "the quick brown fox")
    wrong = scorer.score("the quick brown fox jumps over the lazy dog", "please bring seven green apples")
    assert 0.4 < half.cer < 0.7 and half.wer == pytest.approx(5 / 9)
    assert wrong.cer > 0.6


def test_nothing_heard_or_nothing_to_say():
    scorer = Scorer()
    assert scorer.score("a real sentence", "").cer == 1.0  # nothing heard: every character missed
    assert scorer.score("...", "").cer == 0.0  # no words to say, none said
    assert scorer.score("...", "some words").cer == 1.0


def test_british_spellings_follow_the_recognizers_map():
    assert Scorer().score("the colour", "the color").cer > 0
    assert Scorer({"colour": "color"}).score("the colour", "the color").cer == 0


# -- the judge --------------------------------------------------------------------------------------------------

def test_the_judge_adds_asr_to_the_checks_and_records_the_transcript():
    speechlike = (0.3 * np.sin(np.arange(TURN_RATE * 2) * 0.05)).astype(np.float32)
    turns = [turn("we will meet at the station", speechlike), turn("we will meet at the station", speechlike)]
    heard = Heard(["we will meet at the station", "we will"])
    verdicts = asr_judge(heard, max_cer=0.2)(turns)
    assert heard.calls == [[32_000, 32_000]]  # one call for the batch, resampled 24 kHz -> the recognizer's 16 kHz
    good, bad = verdicts
    assert "asr" not in good.failed and good.measures["cer"] == 0 and good.measures["transcript"] == heard.transcripts[0]
    assert bad.failed[-1] == "asr" and bad.measures["cer"] > 0.2 and bad.measures["wer"] > 0.5


def test_a_lower_cer_breaks_a_tie_but_never_outweighs_a_check():
    two_checks_low_cer = TurnQuality(("asr", "too_slow"), {"cer": 0.3})
    one_check_high_cer = TurnQuality(("asr",), {"cer": 5.0})
    one_check_lower_cer = TurnQuality(("asr",), {"cer": 0.4})
    assert one_check_lower_cer.badness < one_check_high_cer.badness < two_checks_low_cer.badness


# -- transformers' pipeline over a recognizer built here --------------------------------------------------------

@pytest.fixture(scope="module")
def ctc_folder(tmp_path_factory):
    return tiny_ctc(tmp_path_factory.mktemp("asr") / "tiny-ctc")


def test_the_pipeline_transcribes_a_batch_and_skips_what_cannot_be_heard(ctc_folder):
    rng = np.random.default_rng(0)
    recognizer = PipelineRecognizer(asr_model_dir(str(ctc_folder)), batch_size=2)
    assert recognizer.sample_rate == 16_000
    clips = [rng.normal(0, 0.1, 16_000).astype(np.float32), np.zeros(0, np.float32),
             np.full(8000, np.nan, np.float32), rng.normal(0, 0.1, 8000).astype(np.float32)]
    texts = recognizer.transcribe(clips)
    assert len(texts) == 4 and texts[1] == "" and texts[2] == ""
    assert texts[0] and texts[3]  # random weights: letters, but letters


def test_random_weights_fail_the_asr_check_and_a_loose_limit_passes_it(ctc_folder):
    recognizer = PipelineRecognizer(ctc_folder)
    speechlike = (0.3 * np.sin(np.arange(TURN_RATE) * 0.05)).astype(np.float32)
    strict = asr_judge(recognizer, max_cer=0.2)([turn("hello there", speechlike)])[0]
    loose = asr_judge(recognizer, max_cer=1000.0)([turn("hello there", speechlike)])[0]
    assert "asr" in strict.failed and strict.measures["cer"] > 0.2
    assert "asr" not in loose.failed and loose.measures["transcript"] == strict.measures["transcript"]


def test_a_folder_that_is_no_recognizer_is_a_clear_error(tmp_path, ctc_folder):
    with pytest.raises(ModelLoadError, match="no config.json"):
        asr_model_dir(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(ctc_folder, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelLoadError, match="cannot load a speech recognizer"):
        PipelineRecognizer(broken)


def test_to_rate_keeps_duration():
    clip = np.zeros(24_000, np.float32)
    assert len(to_rate(clip, 24_000, 16_000)) == 16_000
    assert to_rate(clip, 16_000, 16_000) is not None


# -- a real recognizer on real speech ---------------------------------------------------------------------------

SENTENCES = ["the quick brown fox jumps over the lazy dog", "we will meet at the station tomorrow morning",
             "please bring seven green apples and a cup of tea"]


@pytest.fixture(scope="module")
def sphinx():
    pytest.importorskip("pocketsphinx")  # .ci/run installs it and espeak-ng
    if not have_espeak():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return Pocketsphinx(SENTENCES)


def test_real_speech_of_the_right_text_passes_and_of_a_wrong_text_fails(sphinx):
    judge = asr_judge(sphinx, max_cer=0.2)
    said = [speak(s) for s in SENTENCES[:3]]
    right = judge([turn(text, audio) for text, audio in zip(SENTENCES[:3], said)])
    wrong = judge([turn(SENTENCES[(i + 1) % 3], audio) for i, audio in enumerate(said)])
    assert [q.measures["cer"] for q in right] == pytest.approx([0, 0, 0], abs=0.05)
    assert all("asr" not in q.failed for q in right)
    assert all("asr" in q.failed and q.measures["cer"] > 0.5 for q in wrong)

