"""Writing a stitched conversation to a local file in the format asked: WAV and FLAC (16-bit PCM, lossless), MP3
(what podcast feeds and players everywhere take) and Opus in Ogg (smaller at the same quality, for the web and
audiobook apps). libsndfile, through soundfile, writes all four: no ffmpeg needed."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from csm_worker.audio import set_tags

from jobs.export.options import AUDIO_FORMATS
from jobs.export.reader import SAMPLE_RATE
from jobs.export.stitch import to_pcm16

_BLOCK = SAMPLE_RATE * 30  # encoded a block at a time


def extension(audio_format: str) -> str:
    return AUDIO_FORMATS[audio_format][2]


def write_audio(path: str, samples: np.ndarray, audio_format: str, tags: dict[str, str] | None = None) -> None:
    """`tags` (csm_worker.audio.TAG_FIELDS): libsndfile writes them as WAV INFO, FLAC and Opus Vorbis comments and
    MP3 ID3v2 frames (TIT2, COMM, ...)."""
    container, subtype, _ = AUDIO_FORMATS[audio_format]
    lossless = audio_format in ("wav", "flac")
    # MP3: libsndfile's default VBR quality; clear speech at podcast sizes (about 64-96 kb/s mono at 24 kHz).
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype, format=container) as f:
        set_tags(f, tags)
        for start in range(0, len(samples), _BLOCK):
            block = samples[start:start + _BLOCK]
            # Lossless: quantize here with the job's own scale, so untouched turns come back bit-exact.
            f.write(to_pcm16(block) if lossless else np.clip(block, -1.0, 1.0))
