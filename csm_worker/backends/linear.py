"""Products with fixed weight matrices: oneDNN with prepacked weights on CPU, plain F.linear elsewhere.

Why oneDNN: torch's default float32 CPU matmul is MKL, which takes its AVX2 code path on non-Intel CPUs; oneDNN
dispatches on the instruction set alone. On this project's AMD EPYC (AVX-512) a [64, 256] x [256, 1536] product
runs at ~105 GFLOP/s per core through MKL and ~230 through oneDNN with a packed weight. Both are IEEE float32
(oneDNN is used in its default full-precision mode), so results differ only in summation order.

Why a class: the weight is reordered once into oneDNN's blocked layout, not on every call.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
import torch.nn.functional as F

# The row count the packed layout is tuned for (the engine's usual batch); other row counts work, a little slower.
BATCH_HINT = 64


def onednn_available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()


class Linear:
    """x [..., in] -> x @ weight.T [..., out] for a fixed weight [out, in]; `add` also adds a residual."""

    def __init__(self, weight: torch.Tensor, use_onednn: bool | None = None):
        self.weight = weight.contiguous()
        if use_onednn is None:
            use_onednn = onednn_available(weight.device, weight.dtype)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, BATCH_HINT) if use_onednn else None

    @property
    def onednn(self) -> bool:
        return self.packed is not None

    @property
    def operand(self) -> torch.Tensor:
        """What product() takes for this weight: the packed one under oneDNN, else the weight itself."""
        return self.packed if self.packed is not None else self.weight

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return product(x, self.operand, self.onednn)

    def add(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return product_add(residual, x, self.operand, self.onednn)


# The two functions below are TorchScript-compatible: the scripted stacks (model/transformer.py, model/depth.py)
# call them.

def product(x: torch.Tensor, w: torch.Tensor, onednn: bool) -> torch.Tensor:
    """x @ W.T, where w is W oneDNN-packed (onednn) or W itself."""
    if onednn:
        no_scalars: List[Optional[Union[int, float, complex]]] = []
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", no_scalars, "")
    return F.linear(x, w)


def product_add(residual: torch.Tensor, x: torch.Tensor, w: torch.Tensor, onednn: bool) -> torch.Tensor:
    """residual + x @ W.T in one op (the add runs on the product's output, as a separate add would)."""
    if onednn:
        return torch.ops.mkldnn._linear_pointwise(x, residual, w, None, "add")
    if x.dim() == 2:
        return torch.addmm(residual, x, w.t())
    return residual + F.linear(x, w)
