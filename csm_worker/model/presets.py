"""Offline model presets: seeded random weights of the real CSM architecture.

A preset is built once, written to a cache folder in the on-disk format of the `sesame/csm-1b` hub repo (config,
safetensors, generation config, tokenizer) and then loaded back through the same `from_pretrained` path as real
weights, so every test exercises the real loading code. The audio they make is noise; they exist for tests and
benchmarks on machines without the real weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_root
from ..errors import ModelLoadError
from .quiet import quiet_transformers

PRESET_PREFIX = "random:"
PRESET_FORMAT_VERSION = 2  # bump when a preset's architecture or tokenizer changes, so old caches are not reused

# Llama-3.2-1B's special tokens as CSM uses them: text BOS/EOS, the audio placeholder and the audio end marker.
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>")

# Mimi as shipped with CSM (24 kHz, 12.5 frames/s, 32 codebooks of 2048), and a shrunken one for the small presets.
# The strides (upsampling ratios) are kept so that one frame is still 1920 samples = 80 ms.
MIMI_FULL: dict = {"model_type": "mimi", "num_quantizers": 32}
MIMI_SMALL: dict = {
    "model_type": "mimi",
    "num_quantizers": 32,
    "hidden_size": 64,
    "num_filters": 8,
    "num_hidden_layers": 1,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "codebook_dim": 32,
    "vector_quantization_hidden_dimension": 32,
    "upsample_groups": 64,
}

# Sesame's release uses Llama-3 RoPE scaling; presets use it too so positions behave as in the real model. The
# values are those of the reference implementation (SesameAILabs/csm models.py: torchtune's Llama-3.2 builder with
# rope_base 500000 and scale_factor 32, whose scaled RoPE keeps low_freq_factor 1, high_freq_factor 4 and an old
# context of 8192) for both the backbone and the depth decoder.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
}


@dataclass(frozen=True)
class Transformer:
    layers: int
    width: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int


@dataclass(frozen=True)
class Preset:
    name: str
    backbone: Transformer
    decoder: Transformer
    text_vocab_size: int
    first_special_id: int  # id of <|begin_of_text|>; the other specials follow it
    mimi: dict
    seed: int = 1234


PRESETS = {
    "tiny": Preset(
        "tiny",
        backbone=Transformer(layers=2, width=128, heads=4, kv_heads=2, head_dim=32, ffn=384),
        decoder=Transformer(layers=2, width=64, heads=4, kv_heads=2, head_dim=16, ffn=192),
        text_vocab_size=260,
        first_special_id=256,
        mimi=MIMI_SMALL,
    ),
    "small": Preset(
        "small",
        backbone=Transformer(layers=4, width=512, heads=8, kv_heads=2, head_dim=64, ffn=1536),
        decoder=Transformer(layers=2, width=256, heads=4, kv_heads=2, head_dim=64, ffn=768),
        text_vocab_size=260,
        first_special_id=256,
        mimi=MIMI_SMALL,
    ),
    # The release's sizes (models.py flavors llama-1B / llama-100M; transformers' CsmConfig defaults agree), its
    # text vocabulary of 128256 with the Llama-3 specials at 128000-128003, a 2048-position backbone window and
    # the full Mimi. Only the tokenizer differs: a byte-level one (the Llama-3 tokenizer cannot be fetched here),
    # so a text takes about 4x the positions it takes with the real model.
    "csm-1b": Preset(
        "csm-1b",
        backbone=Transformer(layers=16, width=2048, heads=32, kv_heads=8, head_dim=64, ffn=8192),
        decoder=Transformer(layers=4, width=1024, heads=8, kv_heads=2, head_dim=128, ffn=8192),
        text_vocab_size=128256,
        first_special_id=128000,
        mimi=MIMI_FULL,
    ),
}


def is_preset(model: str) -> bool:
    return model.startswith(PRESET_PREFIX)


def get_preset(model: str) -> Preset:
    name = model[len(PRESET_PREFIX) :]
    if name not in PRESETS:
        known = ", ".join(PRESET_PREFIX + n for n in PRESETS)
        raise ModelLoadError(f"unknown model preset {model!r}: choose one of {known}")
    return PRESETS[name]


def preset_dir(model: str) -> Path:
    """The preset's folder in the hub repo's format, built on first use (atomically: a killed build leaves no
    half-written folder under the final name)."""
    preset = get_preset(model)
    final = cache_root() / "presets" / f"{preset.name}-v{PRESET_FORMAT_VERSION}"
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{preset.name}-", dir=final.parent))
    try:
        write_preset(preset, staging)
        try:
            os.replace(staging, final)
        except OSError:
            # Another process built it first: keep theirs.
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def csm_config(preset: Preset):
    from transformers import CsmConfig

    bb, dd = preset.backbone, preset.decoder
    first = preset.first_special_id
    return CsmConfig(
        num_codebooks=32,
        vocab_size=2051,
        text_vocab_size=preset.text_vocab_size,
        hidden_size=bb.width,
        intermediate_size=bb.ffn,
        num_hidden_layers=bb.layers,
        num_attention_heads=bb.heads,
        num_key_value_heads=bb.kv_heads,
        head_dim=bb.head_dim,
        max_position_embeddings=2048,
        bos_token_id=first,
        pad_token_id=first + 2,
        audio_token_id=first + 2,
        audio_eos_token_id=first + 3,
        rope_parameters=dict(LLAMA3_ROPE),
        depth_decoder_config={
            "num_codebooks": 32,
            "backbone_hidden_size": bb.width,
            "vocab_size": 2051,
            "hidden_size": dd.width,
            "intermediate_size": dd.ffn,
            "num_hidden_layers": dd.layers,
            "num_attention_heads": dd.heads,
            "num_key_value_heads": dd.kv_heads,
            "head_dim": dd.head_dim,
            "max_position_embeddings": 33,
            "rope_parameters": dict(LLAMA3_ROPE),
        },
        codec_config=dict(preset.mimi),
    )


def byte_level_tokenizer(first_special_id: int):
    """A byte-level tokenizer (every UTF-8 byte is a token, no merges) carrying the Llama-3 special tokens at the
    ids the model config names. Real checkpoints ship the Llama-3 tokenizer instead; both load the same way."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = {tok: first_special_id + i for i, tok in enumerate(LLAMA3_SPECIALS)}
    vocab.update(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=LLAMA3_SPECIALS[0], eos_token=LLAMA3_SPECIALS[1])


def write_preset(preset: Preset, folder: Path) -> None:
    import torch
    from transformers import CsmForConditionalGeneration

    # Seeded init on CPU so every machine builds the same weights for the same preset.
    with quiet_transformers(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.seed)
        model = CsmForConditionalGeneration(csm_config(preset))
        _randomize_codebooks(model.codec_model)
        model.save_pretrained(folder)
    byte_level_tokenizer(preset.first_special_id).save_pretrained(folder)


def _randomize_codebooks(mimi) -> None:
    """transformers initializes Mimi's codebooks to zeros (real ones are learned), which would make every
    preset encode all audio to code 0 and decode every code sequence to the same sound. Seeded random codebook
    vectors make presets behave like a codec: different codes, different audio."""
    import torch
    from transformers.models.mimi.modeling_mimi import MimiEuclideanCodebook

    with torch.no_grad():
        for module in mimi.modules():
            if isinstance(module, MimiEuclideanCodebook):
                module.embed_sum.copy_(0.1 * torch.randn(module.embed_sum.shape))
                module.cluster_usage.fill_(1.0)
