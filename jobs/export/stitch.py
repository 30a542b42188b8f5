"""One conversation's turns joined into one signal: each turn's samples, short fades inside its edges (a turn that
starts or stops mid-waveform would click against the silence), then its pause."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jobs.export.reader import SAMPLE_RATE, Turn
from jobs.export.timeline import Placement, total_samples


def stitch(placements: list[Placement], pcm_of: Callable[[Turn], np.ndarray], fade_ms: float) -> np.ndarray:
    """float32 [-1, 1] samples of the whole conversation; turn audio is read one turn at a time."""
    out = np.zeros(total_samples(placements), np.float32)
    fade = int(round(fade_ms * SAMPLE_RATE / 1000))
    for p in placements:
        pcm = pcm_of(p.turn)
        out[p.start:p.end] = pcm.astype(np.float32) / 32767  # the scale the job encoded with (csm_worker.audio)
        _fade_edges(out[p.start:p.end], fade)
    return out


def _fade_edges(turn: np.ndarray, fade: int) -> None:
    n = min(fade, len(turn) // 2)
    if n <= 0:
        return
    ramp = (np.arange(n, dtype=np.float32) + 0.5) / n  # half-sample offset: never exactly 0 or 1 inside
    turn[:n] *= ramp
    turn[len(turn) - n:] *= ramp[::-1]


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """The inverse of stitch's scaling: untouched samples come back bit-exact."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
