"""The `audio` column: where a given turn's recording is, and whether it can be read."""
from __future__ import annotations

import os
import re

import numpy as np
import soundfile

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SUPPORTED_SCHEMES = ("s3",)


def resolve_audio(value: str, manifest_file: str) -> str:
    """An absolute local path (relative ones count from the manifest's folder) or the URI as given."""
    if _URI.match(value):
        return value
    folder = os.path.dirname(os.path.abspath(manifest_file))
    return os.path.normpath(os.path.join(folder, value))


def scheme_problem(resolved: str) -> str | None:
    match = _URI.match(resolved)
    if match is None or match.group(1).lower() in SUPPORTED_SCHEMES:
        return None
    return f"audio URI scheme {match.group(1)!r} is not supported: use a local path or an s3:// URI"


class AudioProbe:
    """Checks each distinct recording once: many turns often share one voice prompt."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str | None, float | None]] = {}

    def check(self, resolved: str) -> tuple[str | None, float | None]:
        """(problem or None, duration in ms or None when unknown, as for s3:// URIs, which are not fetched)."""
        if resolved not in self._cache:
            self._cache[resolved] = _probe(resolved)
        return self._cache[resolved]


def _probe(resolved: str) -> tuple[str | None, float | None]:
    if _URI.match(resolved):
        return None, None
    if not os.path.isfile(resolved):
        return (f"audio file not found: {resolved}: fix the path (relative paths count from the manifest's "
                "folder) or leave audio null to render the turn"), None
    try:
        info = soundfile.info(resolved)
    except (RuntimeError, OSError) as err:  # soundfile.LibsndfileError is a RuntimeError
        return f"audio {resolved} cannot be decoded ({err}): use WAV, FLAC or another format libsndfile reads", None
    if info.frames <= 0 or info.samplerate <= 0:
        return f"audio {resolved} has no samples: give a recording of the turn", None
    if info.subtype in FLOAT_SUBTYPES:
        problem = _nonfinite_problem(resolved)
        if problem:
            return problem, None
    return None, 1000.0 * info.frames / info.samplerate


# Only float samples can be NaN or infinite; integer PCM and compressed formats decode to finite values, so only
# these recordings are read in full (in blocks: a long voice prompt never sits in memory whole).
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_BLOCK_FRAMES = 1 << 16


def _nonfinite_problem(resolved: str) -> str | None:
    try:
        finite = all(np.isfinite(block).all() for block in soundfile.blocks(resolved, blocksize=_BLOCK_FRAMES))
    except (RuntimeError, OSError) as err:
        return f"audio {resolved} cannot be decoded ({err}): use WAV, FLAC or another format libsndfile reads"
    if finite:
        return None
    return (f"audio {resolved} contains NaN or infinite samples: fix the recording or re-export it "
            "(16-bit PCM cannot hold them)")
