"""What an export was asked for: kinds and settings, checked before anything is read or written."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

KINDS = ("conversations", "captions", "hf", "webdataset")
PER_CONVERSATION = ("conversations", "captions")  # exported as each conversation completes (run --export)
AUDIO_FORMATS = {"wav": ("WAV", "PCM_16", ".wav"), "flac": ("FLAC", "PCM_16", ".flac"),
                 "mp3": ("MP3", "MPEG_LAYER_III", ".mp3"), "opus": ("OGG", "OPUS", ".opus")}


class ExportRequestError(ValueError):
    """A request that cannot be done as asked (exit 2, nothing written)."""


@dataclass(frozen=True)
class ExportOptions:
    kinds: tuple[str, ...] = KINDS
    audio_format: str = "wav"  # conversations
    pause_ms: int = 400  # after a turn whose row has no pause_ms
    fade_ms: float = 5.0  # fade in and out inside each turn's edges, so joins with silence never click
    include_given: bool = False  # given voice-prompt turns in conversations and captions (needs the manifest)
    loudness_lufs: float | None = None  # target integrated loudness; None: leave levels as rendered
    true_peak_db: float = -1.0  # ceiling (dBTP) that normalization never pushes a peak past
    max_shard_mb: float = 256.0  # hf and webdataset shards
    validation_fraction: float = 0.0  # hf: share of conversations in a validation split
    license: str | None = None  # hf dataset card; None: the model's
    include_failed_qc: bool = False  # hf, webdataset: keep the turns that failed the quality checks (flagged)
    manifests: tuple[str, ...] = field(default=())  # for include_given: where the given turns are

    def settings_hash(self, *names: str) -> str:
        """A short hash of the settings named: part of each export's source record, so a changed setting
        re-exports what it affects and nothing else."""
        chosen = {n: asdict(self)[n] for n in names}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def parse_kinds(values) -> tuple[str, ...]:
    """'conversations,captions' or several --to values -> the kinds in KINDS order; unknown ones refused."""
    asked = [k.strip() for v in values for k in str(v).split(",") if k.strip()]
    unknown = [k for k in asked if k not in KINDS]
    if unknown:
        raise ExportRequestError(f"unknown export kind {', '.join(map(repr, unknown))}: use one or more of "
                                 f"{', '.join(KINDS)} (comma-separated or repeated)")
    if not asked:
        raise ExportRequestError(f"no export kind given: use one or more of {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in asked)


def check_options(opts: ExportOptions) -> None:
    if opts.audio_format not in AUDIO_FORMATS:
        raise ExportRequestError(f"--format {opts.audio_format!r}: use one of {', '.join(AUDIO_FORMATS)}")
    if opts.include_given and not opts.manifests:
        raise ExportRequestError("--include-given needs the job's manifest (--manifest ...): OUT holds only the "
                                 "rendered turns, the given turns' audio and text are in the manifest")
    if not 0 <= opts.validation_fraction < 1:
        raise ExportRequestError(f"--split-by-conversation {opts.validation_fraction}: give the validation share "
                                 "of conversations as a number from 0 up to (not including) 1")
    if opts.max_shard_mb <= 0:
        raise ExportRequestError("--max-shard-mb must be positive")
