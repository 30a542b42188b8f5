"""The always-on checks of one rendered turn: cheap (numpy over the turn's samples, no model), run on every turn.

CSM's failures and what shows them in the audio alone:
- runs to its length limit without ending: the engine's end_reason is "max_length";
- mostly silence (a turn that never really speaks): too small a voiced fraction;
- a long pause inside the turn (lost its place, breathing) or a long silent tail (trails off);
- skipped words: far less voiced time than the text needs; babble or a runaway tail: far more;
- clipping, or samples that are NaN or infinite (nothing downstream can use those).

Voiced here means a 20 ms frame whose RMS is within SILENCE_BELOW_PEAK_DB of the turn's loudest frame and above
SILENCE_FLOOR_DBFS: relative to the turn, so a quiet voice is not silence, with a floor, so noise is.

The speech-rate bounds come from ordinary English speech: 100-200 words a minute at ~4.7 letters a word is 8-16
letters a second. A turn is too short for its text only when it would need over twice the fast rate (RATE_MAX),
and too long only past a quarter of the slow rate plus slack (RATE_MIN, LONG_SLACK_S), so natural variation
never fails. They are defaults from that literature, not yet measured on real CSM output (no weights here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FRAME_S = 0.02
SILENCE_BELOW_PEAK_DB = 40.0
SILENCE_FLOOR_DBFS = -60.0
CLIP_LEVEL = 0.999


@dataclass(frozen=True)
class Thresholds:
    min_voiced_fraction: float = 0.25  # below: mostly silence
    max_inner_silence_s: float = 2.0  # a pause longer than this between two voiced stretches
    max_trailing_silence_s: float = 2.0  # silence after the last voiced frame: trailing off
    rate_max: float = 32.0  # letters per voiced second above which words were skipped
    rate_min: float = 2.0  # letters per second of the whole turn below which it babbles or runs on...
    long_slack_s: float = 2.0  # ...once it is longer than this past what rate_min allows
    max_clipped_fraction: float = 0.001
    min_letters: int = 4  # shorter texts ("Hm.") skip the rate checks: their length says too little


@dataclass(frozen=True)
class TurnQuality:
    failed: tuple[str, ...]  # names of the checks that failed, in CHECKS order; empty: passed
    measures: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def badness(self) -> float:
        """How many checks failed: the attempt with fewest is kept when none passes (engine/retries.py). Between
        attempts failing as many, a lower CER (when the ASR check ran) is better; it never outweighs a check."""
        return float(len(self.failed)) + 0.5 * min(float(self.measures.get("cer", 0.0)), 1.0)


CHECKS = ("non_finite", "max_length", "mostly_silence", "inner_silence", "trailing_silence", "too_fast",
          "too_slow", "clipping")  # and "asr" (judge.asr_judge), last, when --qc-asr is on


def check_turn(samples: np.ndarray, sample_rate: int, text: str, end_reason: str,
               thresholds: Thresholds = Thresholds()) -> TurnQuality:
    """The checks of one turn: its samples (1-D float in [-1, 1]), its text and how the engine ended it."""
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.isfinite(samples).all():
        return TurnQuality(("non_finite",) + (("max_length",) if end_reason == "max_length" else ()), {})
    m = measure(samples, sample_rate, text)
    t = thresholds
    rated = m["letters"] >= t.min_letters
    failed = {
        "max_length": end_reason == "max_length",
        "mostly_silence": m["voiced_fraction"] < t.min_voiced_fraction,
        "inner_silence": m["inner_silence_s"] > t.max_inner_silence_s,
        "trailing_silence": m["trailing_silence_s"] > t.max_trailing_silence_s,
        "too_fast": rated and m["voiced_s"] > 0 and m["letters"] / m["voiced_s"] > t.rate_max,
        "too_slow": rated and m["duration_s"] > m["letters"] / t.rate_min + t.long_slack_s,
        "clipping": m["clipped_fraction"] > t.max_clipped_fraction,
    }
    return TurnQuality(tuple(name for name in CHECKS if failed.get(name)), m)


def measure(samples: np.ndarray, sample_rate: int, text: str) -> dict:
    """What the checks look at: durations in seconds, fractions, and the text's letter count."""
    voiced = voiced_frames(samples, sample_rate)
    duration = len(samples) / sample_rate
    where = np.flatnonzero(voiced)
    first, last = (int(where[0]), int(where[-1])) if len(where) else (0, -1)
    return {
        "duration_s": duration,
        "voiced_s": len(where) * FRAME_S,
        "voiced_fraction": len(where) / max(len(voiced), 1),
        "inner_silence_s": _longest_run(~voiced[first:last + 1]) * FRAME_S,
        "trailing_silence_s": max(duration - (last + 1) * FRAME_S, 0.0) if len(where) else duration,
        "clipped_fraction": float(np.mean(np.abs(samples) >= CLIP_LEVEL)) if len(samples) else 0.0,
        "letters": sum(ch.isalnum() for ch in text),
    }


def voiced_frames(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """One bool per 20 ms frame: loud enough, relative to the turn's loudest frame and to an absolute floor."""
    n = int(round(FRAME_S * sample_rate))
    frames = len(samples) // n
    if frames == 0:
        return np.zeros(0, dtype=bool)
    power = np.mean(samples[: frames * n].reshape(frames, n).astype(np.float64) ** 2, axis=1)
    db = 10 * np.log10(np.maximum(power, 1e-20))
    return db > max(db.max() - SILENCE_BELOW_PEAK_DB, SILENCE_FLOOR_DBFS)


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True."""
    if not flags.any():
        return 0
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())
