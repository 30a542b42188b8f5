"""Validating a job's manifests as `validate` and `run` both do: local or copied from S3, text positions counted
with the model's own tokenizer, problems named by the file the user gave (its S3 URI for a copy).

The structural checks (files, columns, types, ids, turn indices, sampling values, given audio) need no model and
always run; the exact window-length check needs the tokenizer. Without one (offline, no hub access, no local
copy), `validate` still reports every structural problem, refuses turns whose words alone overflow the window (a
word is at least one token), and says in one line that the exact check was skipped;
`run` reports the manifest's problems first, then that it needs the model."""

from __future__ import annotations

from contextlib import contextmanager

from csm_worker.errors import ModelLoadError
from csm_worker.model.loading import text_encoder_for
from csm_worker.model.prompt import word_bound_counter

from jobs.manifests.manifest import ManifestError, validate_manifests
from jobs.model_source import local_model
from jobs.manifests.remote import local_manifests
from jobs.manifests.voices import FRAME_MS, check_window, speaker_pairs

WINDOW = 2048  # the backbone's positions (validate_manifests' default window)

WINDOW_CHECK_SKIPPED = ("exact window-length check skipped: the tokenizer of {model} is not available ({reason}); "
                        "turns were checked by word count only, a lower bound of their positions. Enable it with "
                        "--model pointing at a local copy of the model (or a random:* preset), or with access to "
                        "the hub.")


@contextmanager
def validated_manifests(args: list[str], model: str, revision: str | None = None, *,
                        default_max_audio_length_ms: int = 10_000, check_audio: bool = True,
                        s3_endpoint_url: str | None = None, need_model: bool = True, cast=None):
    """Yields (report, localized) for valid manifests; the local copies of S3 manifests live until the block
    ends. With a `cast` (jobs.manifests.voices), its prompts must fit each conversation's window with a turn.
    Raises ManifestError listing every problem; ModelLoadError when the tokenizer cannot be had and
    `need_model` (after the structural problems, if any, were raised as ManifestError)."""
    try:
        encoder, unavailable = text_encoder_for(local_model(model, s3_endpoint_url, tokenizer_only=True),
                                                revision), None
    except ModelLoadError as e:
        encoder, unavailable = None, e
    with local_manifests(list(args), s3_endpoint_url) as local:
        # Without the tokenizer a word count still refuses turns that cannot fit (40,000 words, say).
        report = validate_manifests(local.args, text_positions=encoder.counter() if encoder else word_bound_counter(),
                                    default_max_audio_length_ms=default_max_audio_length_ms,
                                    check_audio=check_audio and not local.has_remote,
                                    collect_rooms=cast is not None)
        if report.ok and cast is not None and encoder is not None:
            report.problems += check_window(cast, speaker_pairs(report.files), encoder.counter(), WINDOW,
                                            default_max_audio_length_ms // FRAME_MS + 1, report.rooms)
        if not report.ok:
            raise ManifestError(local.problems(report.problems))
        if unavailable is not None:
            if need_model:
                raise unavailable
            report.notes.append(WINDOW_CHECK_SKIPPED.format(model=model, reason=_first_clause(unavailable)))
        yield report, local


def _first_clause(error: Exception) -> str:
    """The cause without the advice that follows it (the notice gives its own)."""
    return str(error).split(":", 1)[0].strip()
