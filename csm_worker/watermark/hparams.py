"""A silentcipher checkpoint's hparams.yaml: the few settings inference needs, checked against what this module
implements, so a checkpoint of another shape is a clear error rather than a silently different mark."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import BadCheckpoint

# The published 44.1 kHz checkpoint's settings (sony/silentcipher, 44_1_khz/73999_iteration/hparams.yaml); the
# random preset writes these, so it has the real one's shapes.
REFERENCE = {
    "SR": 44100, "N_FFT": 4096, "HOP_LENGTH": 2048, "message_band_size": 1024, "message_dim": 5,
    "message_len": 21, "message_sdr": 47, "n_messages": 1, "enc_n_layers": 3, "dec_c_n_layers": 4,
    "ensure_negative_message": True, "ensure_constrained_message": False, "frame_level_normalization": False,
    "utterance_level_normalization": True, "no_normalization": False,
}


@dataclass(frozen=True)
class Hparams:
    SR: int
    N_FFT: int
    HOP_LENGTH: int
    message_band_size: int
    message_dim: int
    message_len: int
    message_sdr: float
    n_messages: int
    enc_n_layers: int
    dec_c_n_layers: int
    ensure_negative_message: bool
    ensure_constrained_message: bool
    frame_level_normalization: bool
    utterance_level_normalization: bool
    no_normalization: bool


def read_hparams(path: Path) -> Hparams:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise BadCheckpoint(f"cannot read the watermark's settings {path}: {e}") from e
    if not isinstance(raw, dict):
        raise BadCheckpoint(f"{path} is not a silentcipher hparams.yaml (no settings in it)")
    missing = [f.name for f in fields(Hparams) if f.name not in raw]
    if missing:
        raise BadCheckpoint(f"{path} lacks the setting(s) {', '.join(missing)} of a silentcipher hparams.yaml")
    h = Hparams(**{f.name: raw[f.name] for f in fields(Hparams)})
    if h.n_messages != 1 or h.message_len != 21:
        raise BadCheckpoint(f"{path}: this watermark reads one message of 21 symbols (a 5-byte key), as the 44.1 "
                            f"kHz checkpoint does; this one has n_messages {h.n_messages}, message_len "
                            f"{h.message_len} (the 16 kHz checkpoint cannot hold a 5-byte key)")
    return h
