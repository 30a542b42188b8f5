"""The ASR check's cost on CPU (`--qc-asr`): a recognizer of wav2vec2-base's size against the render it judges.

`python docs/bench/qc_asr.py [--model random:small] [--turns 8] [--batch-size 4] [--max-ms 4000]`

No recognizer can be downloaded here, so the recognizer is wav2vec2-base's architecture (95M parameters, the
size of facebook/wav2vec2-base-960h, CTC: its cost does not depend on what it hears) with random weights, saved in
the hub format and loaded through PipelineRecognizer as `--qc-asr FOLDER` is. Whisper models decode
autoregressively, so their cost depends on the words they hear, which random weights cannot stand for: not
measured. Renders `--turns` single-turn conversations plainly and judged with the ASR check (no retries), in one
process, then times transcribing and scoring the rendered turns alone. Prints times per turn and per second of
audio, and the ratios to the plain render.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from csm_worker import RenderedTurn, load_csm_1b
from csm_worker.quality.asr import PipelineRecognizer, Scorer, score_clips
from csm_worker.quality.judge import asr_judge
from single_turns import arguments, single_turns, timed_render

BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)  # wav2vec2-base


def base_sized_ctc(folder: Path) -> Path:
    import torch
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                              Wav2Vec2Processor)

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4,
             **{c: i + 5 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    features = Wav2Vec2FeatureExtractor(sampling_rate=16_000, return_attention_mask=True)
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(0)
    Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(vocab), pad_token_id=0, **BASE)).save_pretrained(folder)
    return folder


def render(gen, convs, batch_size, **judged) -> tuple[float, list[RenderedTurn]]:
    """Seconds per turn, and the turns."""
    seconds, turns = timed_render(gen, convs, batch_size, **judged)
    return seconds / len(turns), turns


def main() -> None:
    args = arguments(turns=8, batch_size=4, max_ms=4000)
    gen = load_csm_1b(model=args.model, device="cpu")
    convs = lambda: single_turns(args.turns, args.max_ms)
    with tempfile.TemporaryDirectory() as tmp:
        recognizer = PipelineRecognizer(base_sized_ctc(Path(tmp)), device="cpu", batch_size=args.batch_size)
    scorer = Scorer()
    render(gen, convs()[: args.batch_size], args.batch_size)  # warm-up: first-call costs out of the figures
    score_clips(recognizer, scorer, [(t.audio, t.sample_rate) for t in render(gen, convs()[:1], 1)[1]], ["x"])
    plain_s, turns = render(gen, convs(), args.batch_size)
    judged_s, _ = render(gen, convs(), args.batch_size, judge=asr_judge(recognizer, 0.2), retries=0)
    start = time.perf_counter()
    for i in range(0, len(turns), args.batch_size):
        batch = turns[i : i + args.batch_size]
        score_clips(recognizer, scorer, [(t.audio, t.sample_rate) for t in batch], [t.text for t in batch])
    asr_s = (time.perf_counter() - start) / len(turns)
    audio_s = sum(len(t.audio) for t in turns) / turns[0].sample_rate / len(turns)
    print(f"{len(turns)} turns of {audio_s:.2f} s audio on average, batch {args.batch_size}, per turn:\n"
          f"  plain render {plain_s * 1000:.1f} ms\n"
          f"  ASR alone (wav2vec2-base size) {asr_s * 1000:.1f} ms, {asr_s / audio_s * 1000:.1f} ms per audio "
          f"second (ratio {asr_s / plain_s:.3f})\n"
          f"  judged render with ASR, no retries {judged_s * 1000:.1f} ms (ratio {judged_s / plain_s:.3f})")


if __name__ == "__main__":
    main()
