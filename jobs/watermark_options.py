"""A job's watermark settings (`--watermark on|off`, `--watermark-key`, `--watermark-weights`), handed to every
worker, and the watermark each worker builds from them.

On by default with the key of Sesame's reference generator, so the reference's own check finds this tool's marks.
The weights default by model (csm_worker.watermark.default_weights): the published checkpoint for real CSM weights,
seeded random ones for a `random:*` preset. Each turn records what marked it (metadata `watermark`,
`watermark_key`, `watermark_weights`), and the job record the weights' sha256; like the quality settings they are
not part of the job's fingerprint, so a resumed job may change them and every turn still says what it got.
"""

from __future__ import annotations

from dataclasses import dataclass

from csm_worker.watermark import REFERENCE_KEY, default_weights, key_id
from csm_worker.watermark.weights import CHECKPOINT, FILES

from jobs.model_source import local_model

# An s3:// copy of the repo (or of its 44.1 kHz folder alone): only the files the networks load.
WATERMARK_FILES = [f"{CHECKPOINT}/{name}" for name in FILES] + list(FILES)


@dataclass(frozen=True)
class WatermarkOptions:
    enabled: bool = True
    key: tuple[int, ...] = REFERENCE_KEY
    weights: str | None = None  # hub id, folder, s3:// prefix or random:silentcipher; None: by model

    def weights_for(self, model: str) -> str:
        return self.weights or default_weights(model)

    def record(self, model: str) -> dict:
        """What the job record and each turn's metadata say about the watermark."""
        if not self.enabled:
            return {"watermark": "off"}
        return {"watermark": "on", "watermark_key": key_id(self.key), "watermark_weights": self.weights_for(model)}


def make_finalizer(options: WatermarkOptions, model: str, device: str = "cpu",
                   s3_endpoint_url: str | None = None):
    """(the engine's finalize, the loaded watermark) for a worker; (None, None) with --watermark off. Raises
    ModelLoadError (BadCheckpoint when the files are not silentcipher's) before any work."""
    if not options.enabled:
        return None, None
    marker = load_marker(options.weights_for(model), device, s3_endpoint_url)
    return marker.finalizer(options.key), marker


def load_marker(source: str, device: str = "cpu", s3_endpoint_url: str | None = None):
    """The watermark with the weights of `source` (a hub id, local folder, s3:// prefix or random:silentcipher),
    named by `source` itself: an s3:// prefix's local copy (fetched once per node) by the prefix it came from."""
    from csm_worker.watermark import load_watermarker

    return load_watermarker(local_model(source, s3_endpoint_url, patterns=WATERMARK_FILES), device, label=source)


def check_weights_source(options: WatermarkOptions, model: str) -> dict:
    """On the driver, before anything is written: the weights must be there (ModelLoadError, exit 2). A hub id is
    fetched here once into this node's hub cache (12 MB), so a job whose nodes cannot reach the hub stops now,
    not on every worker; s3:// prefixes are left to the workers. Returns what the job record says: the options
    and, unless the weights are on S3, their sha256."""
    record = options.record(model)
    if not options.enabled:
        return record
    from csm_worker.watermark.weights import checkpoint_dir, weights_id

    source = options.weights_for(model)
    if not source.startswith("s3://"):
        record["watermark_sha256"] = weights_id(checkpoint_dir(source))
    return record
