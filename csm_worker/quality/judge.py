"""Judges for the engine's retries (engine/retries.py): a batch of rendered turns in, one verdict per turn out."""

from __future__ import annotations

from collections.abc import Callable

from .checks import Thresholds, TurnQuality, check_turn
from .asr import DEFAULT_MAX_CER, Recognizer, Scorer, score_clips


def checks_judge(thresholds: Thresholds = Thresholds()) -> Callable[[list], list[TurnQuality]]:
    """The always-on checks (checks.py) of each turn: its audio, its text and how the engine ended it."""

    def judge(turns: list) -> list[TurnQuality]:
        return [check_turn(t.audio, t.sample_rate, t.text, t.end_reason, thresholds) for t in turns]

    return judge


def asr_judge(recognizer: Recognizer, max_cer: float = DEFAULT_MAX_CER, thresholds: Thresholds = Thresholds(),
              scorer: Scorer | None = None) -> Callable[[list], list[TurnQuality]]:
    """The always-on checks, then the batch's turns transcribed together (one recognizer call per batch: on a GPU
    that is one batched pass) and scored against their texts: a CER above `max_cer` fails check "asr". The
    measures gain cer, wer and the transcript, which the job records."""
    checks = checks_judge(thresholds)
    scorer = scorer or Scorer(getattr(recognizer, "spelling", None))

    def judge(turns: list) -> list[TurnQuality]:
        base = checks(turns)
        scores = score_clips(recognizer, scorer, [(t.audio, t.sample_rate) for t in turns], [t.text for t in turns])
        return [with_asr(q, s, max_cer) for q, s in zip(base, scores)]

    return judge


def with_asr(quality: TurnQuality, score, max_cer: float) -> TurnQuality:
    failed = quality.failed + (("asr",) if score.cer > max_cer else ())
    measures = {**quality.measures, "cer": score.cer, "wer": score.wer, "transcript": score.transcript}
    return TurnQuality(failed, measures)
