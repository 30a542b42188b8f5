"""The judge a job's settings ask for: the always-on checks, plus the ASR check when `--qc-asr` names a model.

Built once per worker (the recognizer is loaded with it, on the worker's device) and used by the render loop and
by `csm-render qc`; both hand it a batch of turns (anything with audio, sample_rate, text and end_reason).
"""

from __future__ import annotations

from collections.abc import Callable

from csm_worker.model.sources import meant_as_folder
from csm_worker.quality.asr import PipelineRecognizer, asr_model_dir
from csm_worker.quality.judge import asr_judge, checks_judge

from jobs.model_source import local_model
from jobs.qc_options import QcOptions

ASR_BATCH = 16  # turns the recognizer hears at once (the engine judges at most a batch of turns per step)


def make_judge(qc: QcOptions, device: str = "cpu", s3_endpoint_url: str | None = None) -> Callable[[list], list]:
    """Raises csm_worker.errors.ModelLoadError when the recognizer cannot be found or loaded."""
    if not qc.asr:
        return checks_judge(qc.thresholds())
    folder = asr_model_dir(local_model(qc.asr, s3_endpoint_url))
    recognizer = PipelineRecognizer(folder, device=device, batch_size=ASR_BATCH)
    return asr_judge(recognizer, qc.max_cer, qc.thresholds())


def check_recognizer_source(model: str) -> None:
    """On the driver, before anything is written: a local `--qc-asr` folder that is missing or holds no model is
    refused (ModelLoadError) here rather than by every worker. Hub ids and s3:// prefixes are fetched by the
    workers, once per node; a worker that finds them unusable stops the job (BadCheckpoint)."""
    if meant_as_folder(model):
        asr_model_dir(model)
