"""The portable backend: plain PyTorch ops only, so the same code runs on CUDA (and is tested on CPU).

Products are F.linear, functions run eagerly (CUDA graphs, not TorchScript, remove their launch overhead on a
GPU: see engine/static_step.py and engine/cuda_graphs.py), the sampler calls torch.topk, and a decode step is one
call over all rows on the caller's thread.
"""

from __future__ import annotations

from typing import Callable

import torch

from .linear import Linear


class PortableBackend:
    name = "portable"
    native_topk = False  # torch.topk: fast on GPUs, and capturable in a CUDA graph

    def linear(self, weight: torch.Tensor) -> Linear:
        return Linear(weight, use_onednn=False)

    def compile(self, fn: Callable) -> Callable:
        return fn

    def decode_workers(self) -> int:
        return 0  # inline: one step over every row
