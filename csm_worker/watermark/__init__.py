"""The synthetic-speech watermark: silentcipher's 44.1 kHz model (Sony, MIT), with inference code of this project's
own, so that Sesame's reference check finds the marks of every clip this tool renders."""

from .marker import REFERENCE_SDR, Detection, Watermarker
from .message import REFERENCE_KEY, WatermarkKeyError, key_id, parse_key
from .weights import HUB_REPO, RANDOM_WEIGHTS, default_weights, load_watermarker

__all__ = ["Detection", "HUB_REPO", "RANDOM_WEIGHTS", "REFERENCE_KEY", "REFERENCE_SDR", "Watermarker",
           "WatermarkKeyError", "default_weights", "key_id", "load_watermarker", "parse_key"]
