"""The optional ASR check (`--qc-asr MODEL`): transcribe each turn and compare the transcript with its text.

The always-on checks (checks.py) see only the audio's shape: a turn that says the wrong words at a normal pace
passes them. A speech recognizer hears the words. Both texts are normalized the way Whisper's evaluations do it
(transformers' EnglishTextNormalizer: case, punctuation, spelled-out numbers, "Mr." and "mister"), then scored with
jiwer: the character error rate (CER) is what the gate compares with `max_cer`, since it degrades gently with a
misheard word where WER jumps; WER is recorded beside it.

Any recognizer with `transcribe(clips) -> texts` fits (tests use pocketsphinx on espeak-ng speech); jobs use
PipelineRecognizer, transformers' ASR pipeline over a Whisper or CTC model, batched on the worker's device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..model.sources import looks_like_path

DEFAULT_MAX_CER = 0.2  # above: the turn does not say its text (see the README's "ASR check" for why this value)
# What a recognizer's repo needs: configs, tokenizer/vocabulary files and safetensors weights (not its .bin, Flax,
# TensorFlow or ONNX copies).
ASR_PATTERNS = ["*.json", "*.txt", "*.model", "tokenizer*", "vocab*", "merges*", "*.safetensors"]
LONG_CLIP_S = 30.0  # Whisper hears 30 s at a time: longer turns are transcribed in overlapping chunks


class Recognizer(Protocol):
    sample_rate: int  # what transcribe() expects its clips in

    def transcribe(self, clips: list[np.ndarray]) -> list[str]: ...


@dataclass(frozen=True)
class AsrScore:
    cer: float
    wer: float
    transcript: str


class Scorer:
    """Normalize, then CER and WER. `spelling`: British -> American spellings (a Whisper repo's normalizer.json)."""

    def __init__(self, spelling: dict[str, str] | None = None):
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        self.normalize = EnglishTextNormalizer(spelling or {})

    def score(self, text: str, transcript: str) -> AsrScore:
        import jiwer

        ref, hyp = self.normalize(text).strip(), self.normalize(transcript).strip()
        if not any(ch.isalnum() for ch in ref):  # a text of no words ("...", "Hm"): any words heard are all wrong, none are all right
            miss = float(bool(hyp))
            return AsrScore(miss, miss, transcript)
        if not hyp:  # jiwer refuses an empty hypothesis; nothing heard is every character missed
            return AsrScore(1.0, 1.0, transcript)
        return AsrScore(float(jiwer.cer(ref, hyp)), float(jiwer.wer(ref, hyp)), transcript)


def to_rate(clip: np.ndarray, rate: int, wanted: int) -> np.ndarray:
    import soxr

    clip = np.asarray(clip, dtype=np.float32).reshape(-1)
    return clip if rate == wanted or not len(clip) else soxr.resample(clip, rate, wanted).astype(np.float32)


class PipelineRecognizer:
    """transformers' automatic-speech-recognition pipeline over a model folder (resolve with asr_model_dir)."""

    def __init__(self, folder: str | Path, device: str = "cpu", batch_size: int = 8):
        import torch
        from transformers import pipeline

        from ..errors import BadCheckpoint
        from ..model.quiet import quiet_transformers

        self.folder = Path(folder)
        try:
            with quiet_transformers():
                self.pipe = pipeline("automatic-speech-recognition", model=str(folder), device=torch.device(device))
        except Exception as e:  # transformers and safetensors raise many kinds for a bad folder
            # The files are there and unusable: another attempt or worker would find the same, so the job stops.
            raise BadCheckpoint(f"cannot load a speech recognizer (--qc-asr) from {folder}: {e}") from e
        self.sample_rate = int(self.pipe.feature_extractor.sampling_rate)
        self.batch_size = batch_size
        self.spelling = _spelling(self.folder)

    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        texts = [""] * len(clips)
        heard = [i for i, c in enumerate(clips) if len(c) and np.isfinite(c).all()]  # nothing to hear in the rest
        if not heard:
            return texts
        inputs = [{"raw": clips[i], "sampling_rate": self.sample_rate} for i in heard]
        long = max(len(clips[i]) for i in heard) > LONG_CLIP_S * self.sample_rate
        extra = {"chunk_length_s": LONG_CLIP_S} if long else {}
        for i, out in zip(heard, self.pipe(inputs, batch_size=self.batch_size, **extra)):
            texts[i] = out["text"]
        return texts


def asr_model_dir(model: str, revision: str | None = None) -> Path:
    """`--qc-asr MODEL` as a folder: a local folder as it is, a hub id downloaded once into the hub cache (an
    s3:// prefix is copied to a local folder by the job first, as `--model` is)."""
    from ..errors import BadCheckpoint, ModelLoadError
    from ..model.loading import hub_snapshot

    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise BadCheckpoint(f"--qc-asr {model}: the folder has no config.json; point it at a speech "
                                "recognizer saved in the hub format (config.json, weights, tokenizer files)")
        return folder.resolve()
    if looks_like_path(model):
        raise ModelLoadError(f"--qc-asr {model}: no such folder")
    try:
        return hub_snapshot(model, revision, ASR_PATTERNS)
    except ModelLoadError as e:
        raise ModelLoadError(f"--qc-asr {model}: {e}") from e


def _spelling(folder: Path) -> dict[str, str]:
    """A Whisper repo's British -> American spelling map, which its own normalizer uses; other models: none."""
    path = folder / "normalizer.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def score_clips(recognizer: Recognizer, scorer: Scorer, clips: list[tuple[np.ndarray, int]],
                texts: list[str]) -> list[AsrScore]:
    """Transcribe (clip, sample rate) pairs in one batch and score each transcript against its text."""
    heard = recognizer.transcribe([to_rate(c, rate, recognizer.sample_rate) for c, rate in clips])
    return [scorer.score(text, transcript) for text, transcript in zip(texts, heard)]
