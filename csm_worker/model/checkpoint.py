"""Which files of a CSM checkpoint folder are loaded, and whether a folder holds them in the transformers layout.

The hub repo `sesame/csm-1b` holds three copies of the weights: `ckpt.pt` (the original pickle),
`model.safetensors` (the original layout: other tensor names, q/k not permuted for RoPE, no Mimi) and the
transformers checkpoint `transformers-0000N-of-00002.safetensors`, indexed by `transformers.safetensors.index.json`
and named in config.json's `transformers_weights`. Only the last is loaded, so only it is fetched (7.1 GB instead
of 13.3 GB) and hashed. The same rules serve the hub, `--model s3://` copies and local folders.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import BadCheckpoint

# The small files: config, generation/preprocessor configs, index files, tokenizer, chat template.
SMALL_PATTERNS = ["*.json", "*.jinja", "tokenizer*", "*.model"]
SINGLE_FILE = "model.safetensors"
STANDARD_INDEX = "model.safetensors.index.json"

# Tensor names that only the original (non-transformers) layout uses.
ORIGINAL_LAYOUT_MARKERS = ("text_embeddings.weight", "audio_embeddings.weight", "codebook0_head.weight")
HOW_TO_GET_TRANSFORMERS_FILES = (
    "download the transformers-format files: `hf download sesame/csm-1b --include 'transformers*' '*.json' "
    "'*.jinja' 'tokenizer*' --local-dir DIR` (or pass the hub id sesame/csm-1b)"
)


def read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def weight_files(folder: Path) -> list[str]:
    """The weight files `from_pretrained` reads from `folder`, chosen as transformers chooses them: the file or
    index named by config.json's `transformers_weights`, else `model.safetensors`, else the standard index.
    Works on a folder holding only the small files (an index there means shards, not `model.safetensors`)."""
    explicit = read_config(folder).get("transformers_weights")
    if explicit:
        return _shards(folder, explicit) if explicit.endswith(".index.json") else [explicit]
    if not (folder / SINGLE_FILE).exists() and (folder / STANDARD_INDEX).exists():
        return _shards(folder, STANDARD_INDEX)
    return [SINGLE_FILE]


def _shards(folder: Path, index_name: str) -> list[str]:
    index = folder / index_name
    if not index.exists():
        raise BadCheckpoint(f"{folder} names {index_name} as its weights' index but has no such file: "
                             f"the copy is incomplete; {HOW_TO_GET_TRANSFORMERS_FILES}")
    weight_map = json.loads(index.read_text()).get("weight_map") or {}
    return sorted(set(weight_map.values()))


def fetch_patterns(small_folder: Path) -> list[str]:
    """What to download for a folder whose small files are in `small_folder`: those and the loaded weights."""
    return SMALL_PATTERNS + weight_files(small_folder)


def check_complete(folder: Path) -> list[str]:
    """The loaded weight files, after checking they are there and in the transformers layout; a folder
    holding only the original layout is refused with what to download instead."""
    original = [n for n in ("ckpt.pt", SINGLE_FILE) if (folder / n).is_file() and is_original_layout(folder / n)]
    converted = [f for f in folder.glob("*.safetensors") if f.name not in original]
    only_original = BadCheckpoint(
        f"{folder} holds only the original (non-transformers) CSM weights ({', '.join(original)}), which this tool "
        f"does not convert (they lack the Mimi codec); {HOW_TO_GET_TRANSFORMERS_FILES}")
    try:
        names = weight_files(folder)
    except BadCheckpoint:  # the index is missing
        if original and not converted:
            raise only_original from None
        raise
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and original and len(missing) == len(names):
        raise only_original
    if missing:
        raise BadCheckpoint(f"{folder} lacks weight file(s) {', '.join(missing)} named by its config or index: "
                             f"the copy is incomplete; {HOW_TO_GET_TRANSFORMERS_FILES}")
    for name in names:
        if name in original:
            raise BadCheckpoint(f"{folder / name} is in the original (non-transformers) CSM layout, which this "
                                 f"tool does not convert; {HOW_TO_GET_TRANSFORMERS_FILES}")
    return names


def is_original_layout(path: Path) -> bool:
    """True for the original checkpoint: a pickle (`ckpt.pt`), or safetensors with the original tensor names."""
    if path.suffix != ".safetensors":
        return path.name == "ckpt.pt"
    return any(name in ORIGINAL_LAYOUT_MARKERS for name in safetensors_names(path))


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (every tensor's name, dtype, shape and offsets)."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return fh.read(min(length, 1 << 26))


def safetensors_names(path: Path) -> list[str]:
    return [k for k in json.loads(safetensors_header(path)) if k != "__metadata__"]
