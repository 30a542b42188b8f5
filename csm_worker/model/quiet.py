"""quiet_transformers(): transformers' per-load noise silenced, for every module that loads or saves a model."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_transformers():
    """Silence transformers' per-load progress bars and its warning about the llama3 RoPE block of CSM's config
    (harmless, printed once per load); a job loads the model once per worker and the noise hides real output."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
