"""silentcipher's message format. A key of 5 bytes is 40 bits, read two at a time as 20 symbols (0-3); each is
shifted up by one and an end symbol 0 follows, 21 symbols in all, one per spectrogram frame, repeated along the
clip. The decoder takes, per position of that cycle, the symbol seen most often; the cycle is rotated so that it
ends at the end symbol, and the symbols turned back into bytes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFERENCE_KEY = (212, 211, 146, 56, 201)  # the key Sesame's reference generator marks every clip with
KEY_BYTES = 5


class WatermarkKeyError(ValueError):
    pass


def parse_key(text: str) -> tuple[int, ...]:
    """`--watermark-key`: five bytes as decimal numbers (`212,211,146,56,201`) or ten hex digits (`d4d39238c9`)."""
    text = text.strip()
    try:
        if "," in text:
            key = tuple(int(part) for part in text.split(","))
        else:
            key = tuple(bytes.fromhex(text))
    except ValueError:
        key = ()
    if len(key) != KEY_BYTES or not all(0 <= b <= 255 for b in key):
        raise WatermarkKeyError(f"--watermark-key {text!r}: expected {KEY_BYTES} bytes, as decimal numbers 0-255 separated "
                        "by commas (212,211,146,56,201) or as 10 hex digits (d4d39238c9)")
    return key


def key_id(key: tuple[int, ...]) -> str:
    """How metadata names a key: its hex digits (a key is not a secret: the reference's is published)."""
    return bytes(key).hex()


def symbols(key: tuple[int, ...]) -> np.ndarray:
    """The cycle of symbols for a key: 20 two-bit symbols shifted by one, then the end symbol 0."""
    bits = "".join(f"{b:08b}" for b in key)
    pairs = [int(bits[i : i + 2], 2) for i in range(0, len(bits), 2)]
    return np.array([p + 1 for p in pairs] + [0])


def one_hot_frames(key: tuple[int, ...], frames: int, dim: int) -> np.ndarray:
    """[dim, frames]: the one-hot symbol of each frame, the cycle repeated from frame 0."""
    cycle = symbols(key)
    return np.eye(dim, dtype=np.float32)[np.resize(cycle, frames)].T


@dataclass(frozen=True)
class Reading:
    key: tuple[int, ...] | None  # None: no message could be read (no end symbol, or symbols that make no bytes)
    confidence: float  # the share of frames that agree with the per-position majority


def read(frame_symbols: np.ndarray, cycle: int, dim: int) -> Reading:
    """The message in the symbols decoded for each frame (whole cycles only), as silentcipher reads it."""
    rows = frame_symbols[: len(frame_symbols) // cycle * cycle].reshape(-1, cycle)
    if not len(rows):
        return Reading(None, 0.0)
    counts = np.stack([np.bincount(col, minlength=dim) for col in rows.T])
    majority = counts.argmax(axis=1)  # the smallest of equally common symbols, as scipy's mode picks
    confidence = float((rows == majority[None]).mean())
    ends = np.nonzero(majority == 0)[0]
    if not len(ends):
        return Reading(None, confidence)
    end = ends[0]
    ordered = np.concatenate([majority[end + 1 :], majority[:end]]) - 1
    return Reading(_to_bytes(ordered), confidence)


def agreement(frame_symbols: np.ndarray, cycle: int, dim: int) -> float:
    """How consistently the cycle repeats: the mean share of the majority per position (phase search's score)."""
    rows = frame_symbols[: len(frame_symbols) // cycle * cycle].reshape(-1, cycle)
    if not len(rows):
        return 0.0
    return float(np.mean([np.bincount(col, minlength=dim).max() / len(rows) for col in rows.T]))


def _to_bytes(ordered: np.ndarray) -> tuple[int, ...] | None:
    """Two-bit symbols -> bytes, with silentcipher's text arithmetic: a symbol of -1 (a second end symbol) writes
    "-1", which either makes a chunk no binary number (nothing read) or a negative one (a wrong key, as upstream)."""
    text = "".join(format(int(v), "02b") for v in ordered)
    try:
        return tuple(int(text[i : i + 8], 2) for i in range(0, len(text) // 8 * 8, 8))
    except ValueError:
        return None
