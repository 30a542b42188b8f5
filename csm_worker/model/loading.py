"""Resolve `--model` (hub id, local folder or `random:*` preset) to a folder and load it with transformers.

Every kind of model ends in the same call: `CsmForConditionalGeneration.from_pretrained(folder)` plus the
tokenizer saved beside it, so presets exercise exactly the code that loads `sesame/csm-1b`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import BadCheckpoint, ModelLoadError
from . import checkpoint, presets
from .quiet import quiet_transformers

DEFAULT_MODEL = "sesame/csm-1b"
TOKENIZER_PATTERNS = ["*.json", "tokenizer*", "*.jinja"]  # enough to count text positions on the driver


@dataclass
class LoadedModel:
    name: str  # what the user asked for (`--model`)
    path: Path  # the folder it was loaded from
    hf: "torch.nn.Module"  # transformers' CsmForConditionalGeneration, eval mode
    tokenizer: object
    weights_hash: str  # identifies the weights for job fingerprints

    @property
    def config(self):
        return self.hf.config


def resolve_model_dir(model: str = DEFAULT_MODEL, revision: str | None = None) -> Path:
    if presets.is_preset(model):
        return presets.preset_dir(model)
    if Path(model).expanduser().is_dir():
        folder = Path(model).expanduser().resolve()
        if not (folder / "config.json").exists():
            raise ModelLoadError(f"{folder} has no config.json: point --model at a folder saved in the hub format")
        return folder
    return download_from_hub(model, revision)


def download_from_hub(repo_id: str, revision: str | None) -> Path:
    """The small files first, then only the weight files they name (the repo's other copies of the weights,
    `ckpt.pt` and the original-layout `model.safetensors`, are never fetched). The second fetch is pinned to the
    commit of the first, so a push in between cannot mix two versions."""
    small = hub_snapshot(repo_id, revision, checkpoint.SMALL_PATTERNS)
    return hub_snapshot(repo_id, _commit_of(small) or revision, checkpoint.fetch_patterns(small))


def _commit_of(snapshot: Path) -> str | None:
    """A hub cache snapshot lives in `.../snapshots/<commit sha>`."""
    return snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else None


def hub_snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import snapshot_download

    fix = (
        f"accept the model's terms at https://huggingface.co/{repo_id}, then set HF_TOKEN (or run `hf auth login`);"
        " or pass --model with a local folder or a random:* preset"
    )
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except hub_errors.GatedRepoError as e:
        raise ModelLoadError(f"{repo_id} is gated and this token has no access: {fix}") from e
    except hub_errors.RepositoryNotFoundError as e:
        raise ModelLoadError(f"{repo_id} not found on the hub, or it needs a token: {fix}") from e
    except hub_errors.RevisionNotFoundError as e:
        raise ModelLoadError(f"{repo_id} has no revision {revision!r}") from e
    except hub_errors.LocalEntryNotFoundError as e:
        raise ModelLoadError(
            f"cannot download {repo_id} (offline, or the hub cannot be reached) and it is not in the local cache:"
            " pre-download it with `hf download` or pass --model with a local folder"
        ) from e


def weights_hash(folder: Path) -> str:
    """A cheap identity of the loaded weights: names, sizes and the safetensors headers (which hold every
    tensor's dtype, shape and offsets) of the files `from_pretrained` reads, and config.json. Hashing gigabytes
    of weights on every start would cost more than it tells; files that are not loaded do not count."""
    h = hashlib.sha256()
    for name in sorted(checkpoint.weight_files(folder)):
        f = folder / name
        h.update(f.name.encode() + str(f.stat().st_size).encode() + checkpoint.safetensors_header(f)[: 1 << 24])
    h.update((folder / "config.json").read_bytes())
    return h.hexdigest()[:16]


def load_pretrained(
    model: str = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> LoadedModel:
    from transformers import AutoTokenizer, CsmForConditionalGeneration

    folder = resolve_model_dir(model, revision)
    files = checkpoint.check_complete(folder)
    try:
        with quiet_transformers():
            # Mis-shaped tensors are reported in `info` (and refused below) instead of a bare RuntimeError.
            hf, info = CsmForConditionalGeneration.from_pretrained(folder, dtype=dtype, output_loading_info=True,
                                                                   ignore_mismatched_sizes=True)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load a CSM model from {folder}: {e}") from e
    check_loading_info(folder, files, info)
    hf.to(device).eval()
    # Mimi is kept in float32: it is a small part of the work and its quality suffers most from bf16.
    hf.codec_model.to(torch.float32)
    return LoadedModel(name=model, path=folder, hf=hf, tokenizer=tokenizer, weights_hash=weights_hash(folder))


def check_loading_info(folder: Path, files: list[str], info: dict) -> None:
    """Missing, unexpected or mis-shaped tensors mean random weights where real ones were wanted: the model would
    render noise for hours. transformers only logs them (and we silence its log), so refuse them here."""
    problems = [(kind, sorted(info.get(kind) or [])) for kind in ("missing_keys", "unexpected_keys",
                                                                   "mismatched_keys", "error_msgs")]
    problems = [(kind, keys) for kind, keys in problems if keys]
    if not problems:
        return
    said = "; ".join(f"{len(keys)} {kind.replace('_', ' ')} (first: {', '.join(map(str, keys[:3]))})"
                     for kind, keys in problems)
    raise BadCheckpoint(f"the weights in {folder} ({', '.join(files)}) do not match a CSM model of its config.json:"
                         f" {said}. The copy may be incomplete or of another model; "
                         f"{checkpoint.HOW_TO_GET_TRANSFORMERS_FILES}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str) -> str:
    if device == "auto":
        return default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    return device


def dtype_for(device: str, dtype: str | None) -> torch.dtype:
    """float32 on CPU, bf16 on CUDA unless asked otherwise."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}: choose one of {', '.join(table)}")
    return table[dtype]


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers warns after Ray forks otherwise


def tokenizer_dir(model: str, revision: str | None = None) -> Path:
    """The folder holding the tokenizer: for a hub id only the small tokenizer/config files are fetched, so a
    driver can validate manifests without downloading the weights."""
    if presets.is_preset(model) or Path(model).expanduser().is_dir():
        return resolve_model_dir(model, revision)
    try:
        return hub_snapshot(model, revision, TOKENIZER_PATTERNS)
    except ModelLoadError:
        raise
    except Exception as e:  # network and HTTP errors that download_from_hub does not translate
        raise ModelLoadError(f"cannot fetch the tokenizer of {model}: {e}") from e


def text_encoder_for(model: str, revision: str | None = None):
    from transformers import AutoTokenizer

    from .prompt import TextEncoder

    folder = tokenizer_dir(model, revision)
    with quiet_transformers():
        return TextEncoder(AutoTokenizer.from_pretrained(folder))
