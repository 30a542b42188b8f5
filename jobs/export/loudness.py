"""Loudness normalization: ITU-R BS.1770 integrated loudness (pyloudnorm), one gain for the whole conversation, and
a true-peak ceiling the gain never pushes past (so nothing clips, also after lossy encoding)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import soxr

from jobs.export.reader import SAMPLE_RATE

OVERSAMPLE = 4  # BS.1770-4 annex 2: true peak from 4x oversampling
_CHUNK = SAMPLE_RATE * 60  # oversample a minute at a time: a long chapter's 4x copy never exists whole


@dataclass(frozen=True)
class LoudnessResult:
    target_lufs: float
    before_lufs: float | None  # None: too short or silent to measure (BS.1770 gates below -70 LUFS)
    after_lufs: float | None
    gain_db: float
    true_peak_db: float  # after the gain
    limited_by_ceiling: bool  # the gain stopped short of the target to keep the peak under the ceiling

    def as_dict(self) -> dict:
        out = {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in vars(self).items()}
        out["limited_by_ceiling"] = bool(self.limited_by_ceiling)  # numpy's bool is not JSON's
        return out


def integrated_lufs(samples: np.ndarray) -> float | None:
    import pyloudnorm

    if len(samples) < int(0.4 * SAMPLE_RATE):  # shorter than one gating block: not measurable
        return None
    value = float(pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(samples.astype(np.float64)))
    return value if math.isfinite(value) else None


def true_peak_db(samples: np.ndarray) -> float:
    stream = soxr.ResampleStream(SAMPLE_RATE, SAMPLE_RATE * OVERSAMPLE, 1, dtype="float32", quality="HQ")
    peak = float(np.max(np.abs(samples), initial=0.0))
    for start in range(0, len(samples), _CHUNK):
        chunk = samples[start:start + _CHUNK]
        up = stream.resample_chunk(chunk, last=start + _CHUNK >= len(samples))
        peak = max(peak, float(np.max(np.abs(up), initial=0.0)))
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def normalize(samples: np.ndarray, target_lufs: float, ceiling_db: float) -> tuple[np.ndarray, LoudnessResult]:
    """The samples scaled to `target_lufs`, or as near as the ceiling allows; measured before and after."""
    before = integrated_lufs(samples)
    if before is None:
        return samples, LoudnessResult(target_lufs, None, None, 0.0, true_peak_db(samples), False)
    gain_db = target_lufs - before
    peak = true_peak_db(samples)
    limited = bool(peak + gain_db > ceiling_db)
    if limited:
        gain_db = ceiling_db - peak - 0.05  # a hair under: quantization to 16 bits may round a peak up
    out = (samples * np.float32(10 ** (gain_db / 20))).astype(np.float32)
    return out, LoudnessResult(target_lufs, before, integrated_lufs(out), gain_db, true_peak_db(out), limited)
