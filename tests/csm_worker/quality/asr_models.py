"""Recognizers for the ASR check's tests, all offline: a tiny randomly initialized CTC model saved in the hub
format (transformers' pipeline loads it as it loads a real one; it hears nothing), and pocketsphinx, whose
English model ships inside its PyPI wheel, on speech synthesized with espeak-ng (a real recognizer on real speech).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

TURN_RATE = 24_000  # CSM's (Mimi's) sample rate: the test speech is handed to the judge as a rendered turn is


def tiny_ctc(folder: Path, seed: int = 0) -> Path:
    """A wav2vec2 CTC recognizer of a few thousand random weights, with its tokenizer and feature extractor."""
    import torch
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz'"
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate(letters)}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    features = Wav2Vec2FeatureExtractor(sampling_rate=16_000, return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(seed)
    config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=4, pad_token_id=0)
    Wav2Vec2ForCTC(config).save_pretrained(folder)
    return folder


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng (US English), as a 24 kHz float32 turn."""
    import soundfile as sf
    import soxr

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), text], check=True,
                       capture_output=True, timeout=60)
        samples, rate = sf.read(wav, dtype="float32")
    return soxr.resample(samples, rate, TURN_RATE).astype(np.float32)


class Pocketsphinx:
    """pocketsphinx behind the judge's Recognizer interface. Its open-vocabulary language model misses most words
    of espeak-ng's formant voice, and even a loop over the test's own words got 30-50% CER on the right text
    (measured 2026-12-06), so it decodes against a grammar of the sentences a test may speak, with wide beams (the
    default ones prune every path of a long sentence before its end): it still has to hear which one was said."""

    sample_rate = 16_000

    def __init__(self, sentences: list[str]):
        from pocketsphinx import Decoder

        self._tmp = tempfile.TemporaryDirectory()
        grammar = Path(self._tmp.name) / "sentences.jsgf"
        choices = " | ".join(f"( {s.lower()} )" for s in sentences)
        grammar.write_text(f"#JSGF V1.0;\ngrammar sentences;\npublic <s> = {choices} ;\n")
        self.decoder = Decoder(samprate=self.sample_rate, jsgf=str(grammar), loglevel="FATAL", beam=1e-80,
                               wbeam=1e-60, pbeam=1e-80)

    def transcribe(self, clips: list[np.ndarray]) -> list[str]:
        return [self._one(c) for c in clips]

    def _one(self, clip: np.ndarray) -> str:
        pcm = (np.clip(clip, -1, 1) * 32767).astype(np.int16).tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp else ""
