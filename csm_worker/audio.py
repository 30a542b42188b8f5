"""Audio in and out: decode any file to 24 kHz mono float32, encode rendered turns to WAV/FLAC bytes.

Uses soundfile (libsndfile) for I/O and soxr for resampling; torchaudio is deliberately not a dependency.
Arrays are float32 in [-1, 1]. Torch tensors are accepted wherever an array is (duck-typed, torch is not imported).
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 24_000  # Mimi's rate: everything the model consumes or produces is at 24 kHz
_FORMATS = {"wav": ("WAV", ".wav"), "flac": ("FLAC", ".flac")}
_PCM16_SCALE = 32767  # symmetric scale, so +1.0 and -1.0 both fit in int16

Source = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class AudioError(ValueError):
    """Audio that cannot be decoded, is empty, or holds non-finite samples."""


def load_audio(source: Source, target_rate: int = SAMPLE_RATE, *, name: str | None = None) -> np.ndarray:
    """Decode a file, path or bytes to float32 mono at `target_rate`. `name` labels bytes/streams in errors."""
    label = name or _describe(source)
    try:
        data, rate = sf.read(_as_file(source, label), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"cannot decode audio {label}: {exc}. Use a WAV, FLAC, OGG or MP3 file.") from exc
    if data.shape[0] == 0:
        raise AudioError(f"audio {label} is empty (0 samples): give a recording with sound in it")
    return _convert(data, rate, target_rate, label)


def to_mono_24k(samples: Any, sample_rate: int) -> np.ndarray:
    """The same conversion as `load_audio`, for an in-memory [n] or [n, channels] array or tensor."""
    return _convert(_as_array(samples), sample_rate, SAMPLE_RATE, "array")


TAG_FIELDS = ("title", "comment", "software", "artist", "album", "license")  # what libsndfile writes


def encode_audio(samples: Any, fmt: str = "wav", sample_rate: int = SAMPLE_RATE,
                 tags: dict[str, str] | None = None) -> bytes:
    """Encode mono samples as 16-bit PCM WAV or FLAC and return the file's bytes (callers store them atomically).
    `tags` (TAG_FIELDS): written by libsndfile into the file itself, a WAV's LIST/INFO chunk or FLAC's Vorbis
    comments."""
    container = _FORMATS[_check_format(fmt)][0]
    mono = _as_mono_vector(_as_array(samples))
    _check_finite(mono, "samples to encode")
    # Quantize here rather than in libsndfile, whose float->int conversion does not clip by default.
    pcm = np.round(np.clip(mono, -1.0, 1.0) * _PCM16_SCALE).astype(np.int16)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sample_rate, 1, "PCM_16", format=container) as f:
        set_tags(f, tags)
        f.write(pcm)
    return buf.getvalue()


def set_tags(f: sf.SoundFile, tags: dict[str, str] | None) -> None:
    """Before the first sample: FLAC and Ogg write their comments ahead of the audio."""
    for name, value in (tags or {}).items():
        if name not in TAG_FIELDS:
            raise ValueError(f"unknown audio tag {name!r}: one of {', '.join(TAG_FIELDS)}")
        setattr(f, name, value)


def audio_extension(fmt: str) -> str:
    """File extension for an output format: ".wav" or ".flac"."""
    return _FORMATS[_check_format(fmt)][1]


def audio_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def probe_audio(source: Source) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) from the header alone: cheap validation of manifests' audio."""
    label = _describe(source)
    try:
        info = sf.info(_as_file(source, label))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"cannot decode audio {label}: {exc}. Use a WAV, FLAC, OGG or MP3 file.") from exc
    return info.samplerate, info.channels, info.frames


def content_hash(samples: Any) -> str:
    """sha256 of the samples as float32 little-endian: a cache key for Mimi-encoded voice prompts."""
    arr = np.ascontiguousarray(_as_array(samples), dtype="<f4")
    return hashlib.sha256(arr.tobytes()).hexdigest()


# --- helpers ---------------------------------------------------------------------------------------


def _convert(data: np.ndarray, rate: int, target_rate: int, label: str) -> np.ndarray:
    """[n] or [n, channels] at `rate` -> float32 [m] at `target_rate`."""
    if rate <= 0 or target_rate <= 0:
        raise AudioError(f"audio {label}: sample rates must be positive (got {rate} -> {target_rate})")
    if data.ndim == 2:
        data = data.mean(axis=1)  # average channels: keeps a centred voice at its level
    elif data.ndim != 1:
        raise AudioError(f"audio {label}: expected shape [n] or [n, channels], got {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    _check_finite(data, f"audio {label}")
    if rate == target_rate or data.size == 0:
        return data
    return soxr.resample(data, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _as_array(samples: Any) -> np.ndarray:
    """numpy view of an array or torch tensor as float32; integer PCM is scaled to [-1, 1)."""
    if hasattr(samples, "detach"):
        samples = samples.detach().cpu()
        if samples.is_floating_point():
            samples = samples.float()  # numpy has no bfloat16
        samples = samples.numpy()
    arr = np.asarray(samples)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
    return arr.astype(np.float32, copy=False)


def _as_mono_vector(arr: np.ndarray) -> np.ndarray:
    """Accept [n] and any shape with one non-unit axis ([1, 1, n] from the codec, [n, 1])."""
    if arr.ndim != 1 and sum(d > 1 for d in arr.shape) > 1:
        raise AudioError(f"expected mono samples, got shape {arr.shape}")
    return arr.reshape(-1)


def _check_finite(arr: np.ndarray, label: str) -> None:
    if not np.isfinite(arr).all():
        raise AudioError(f"{label} contains NaN or infinite samples")


def _check_format(fmt: str) -> str:
    key = str(fmt).lower()
    if key not in _FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}: choose one of {', '.join(sorted(_FORMATS))}")
    return key


def _as_file(source: Source, label: str) -> Any:
    """What soundfile can open: a path string or a binary stream."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise AudioError(f"audio file {label} does not exist or is not a file: check the path")
        return path
    return source


def _describe(source: Source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    return repr(getattr(source, "name", None) or source)
