"""The errors csm_worker raises when a model cannot be had; every part imports them from here, so none of the
loading modules has to import another to raise one."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


class BadCheckpoint(ModelLoadError):
    """The model's files are there but are not a whole CSM checkpoint in the transformers layout: retrying or
    another worker cannot help, so a job stops at once (a download that failed is a plain ModelLoadError)."""
