"""A model folder laid out file for file as the real hub repo `sesame/csm-1b` is, with a preset's weights.

The real repo (its weights can never be downloaded here) holds:
    config.json                                  transformers keys beside the original `*_flavor` keys, and
                                                 `transformers_weights: transformers.safetensors.index.json`
    transformers.safetensors.index.json          weight_map -> the two shards
    transformers-00001-of-00002.safetensors      backbone and depth decoder (4.94 GB)
    transformers-00002-of-00002.safetensors      the rest, Mimi under `codec_model.*` (2.19 GB)
    model.safetensors                            the ORIGINAL layout (other names, no Mimi; 6.2 GB): not loaded
    ckpt.pt                                      the original pickle (6.2 GB): not loaded
    generation_config.json, preprocessor_config.json, chat_template.jinja, tokenizer files, prompts/*.wav
Here the shards hold `random:tiny`'s tensors, and the two original-layout files are small decoys.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile
import torch
from safetensors.torch import load_file, save_file

INDEX = "transformers.safetensors.index.json"
SHARDS = ("transformers-00001-of-00002.safetensors", "transformers-00002-of-00002.safetensors")
ORIGINAL_FILES = ("model.safetensors", "ckpt.pt")


def write_hub_layout(preset_folder: Path, dest: Path) -> Path:
    """`dest` laid out as sesame/csm-1b, with the weights of the preset saved in `preset_folder`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(preset_folder / name, dest / name)
    tensors = load_file(preset_folder / "model.safetensors")
    _write_shards(tensors, dest)
    config = json.loads((preset_folder / "config.json").read_text())
    # The original repo's keys stay in the real config.json beside transformers' own.
    config.update({"transformers_weights": INDEX, "backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M",
                   "audio_num_codebooks": 32, "audio_vocab_size": 2051})
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    (dest / "preprocessor_config.json").write_text(json.dumps(
        {"feature_extractor_type": "EncodecFeatureExtractor", "sampling_rate": 24000, "feature_size": 1}))
    (dest / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    write_original_layout(tensors, dest)
    (dest / "prompts").mkdir(exist_ok=True)
    soundfile.write(dest / "prompts" / "conversational_a.wav", np.zeros(2400, dtype=np.float32), 24000)
    return dest


def _write_shards(tensors: dict[str, torch.Tensor], dest: Path) -> None:
    """Backbone and depth decoder in the first shard, everything else (Mimi included) in the second."""
    first = {k: v for k, v in tensors.items() if k.startswith(("backbone_model.", "depth_decoder.", "embed_text_tokens."))}
    second = {k: v for k, v in tensors.items() if k not in first}
    weight_map = {}
    for shard, part in zip(SHARDS, (first, second)):
        save_file(part, dest / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    (dest / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_original_layout(tensors: dict[str, torch.Tensor], dest: Path) -> None:
    """Decoys in the original layout: the original tensor names (no Mimi), as a safetensors file and a pickle."""
    original = {
        "text_embeddings.weight": tensors["embed_text_tokens.weight"],
        "audio_embeddings.weight": tensors["depth_decoder.model.embed_tokens.weight"],
        "codebook0_head.weight": tensors["lm_head.weight"],
        "backbone.layers.0.attn.q_proj.weight": tensors["backbone_model.layers.0.self_attn.q_proj.weight"],
    }
    save_file({k: v.contiguous().clone() for k, v in original.items()}, dest / "model.safetensors")
    torch.save({"model": original}, dest / "ckpt.pt")
