"""Validating a job's manifests as `validate` and `run` both do: local or copied from S3, text positions counted
with the model's own tokenizer, problems named by the file the user gave (its S3 URI for a copy)."""

from __future__ import annotations

from contextlib import contextmanager

from csm_worker.loading import text_encoder_for

from jobs.manifests.manifest import ManifestError, validate_manifests
from jobs.model_source import local_model
from jobs.manifests.remote import local_manifests


@contextmanager
def validated_manifests(args: list[str], model: str, revision: str | None = None, *,
                        default_max_audio_length_ms: int = 10_000, check_audio: bool = True,
                        s3_endpoint_url: str | None = None):
    """Yields (report, localized) for valid manifests; the local copies of S3 manifests live until the block
    ends. Raises ManifestError listing every problem, ModelLoadError when the tokenizer cannot be had."""
    encoder = text_encoder_for(local_model(model, s3_endpoint_url, tokenizer_only=True), revision)
    with local_manifests(list(args), s3_endpoint_url) as local:
        report = validate_manifests(local.args, text_positions=encoder.counter(),
                                    default_max_audio_length_ms=default_max_audio_length_ms,
                                    check_audio=check_audio and not local.has_remote)
        if not report.ok:
            raise ManifestError(local.problems(report.problems))
        yield report, local
