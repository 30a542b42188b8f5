"""The depth decoder's codebooks 1..31 of a frame as one function, compiled with TorchScript on the cpu backend.

Why TorchScript: the 30 shared-position steps and 31 draws are ~2,500 small ops a frame. From Python each op
holds the GIL while it is dispatched, and when backends/cpu/row_split.py runs two blocks of rows at once the threads
queue for it: two workers ran a batch-64 frame in 61-67 ms against 72-80 on one. Run as TorchScript, the loop holds
the GIL only inside the sampler's top-k (a Python op) and two workers took 48-51 ms. Codes are the same either way
(tests); where scripting fails, and on the portable backend (CUDA graphs capture it there), it runs eagerly.

Shapes: B rows, H query heads, K kv heads (G = H // K queries each), D head dim, T = 33 cache positions.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..backends.linear import product, product_add
from .sampling import draw
from .transformer import StackWeights, rms, rotate


class DepthWeights(NamedTuple):
    """Everything the loop reads, as tensors and numbers (TorchScript takes no objects of ours)."""

    stack: StackWeights  # the depth decoder's layers
    dd_in: torch.Tensor  # [32 * vocab, dd_dim]: embed a code, then project it
    heads: List[torch.Tensor]  # 31 x [vocab, dd_dim], packed like the stack's products
    vocab: int
    native_topk: bool  # the sampler's top-k: the CPU backend's op (backends/cpu/topk.py), else torch.topk


def step_at(x: torch.Tensor, p: int, k_cache: torch.Tensor, v_cache: torch.Tensor, lo: int, hi: int,
            w: StackWeights) -> torch.Tensor:
    """One new position `p` shared by every row: x [B, dim] -> [B, dim]. All rows are at the same codebook, so
    RoPE is one broadcast row, the cache write a plain slice copy, and attention over p + 1 keys needs no mask;
    small matmuls beat SDPA's per-call overhead here. Caches [L, R, K, T, D]; this call owns rows lo..hi-1."""
    B = x.shape[0]
    H, K, D = w.heads_q, w.heads_kv, w.head_dim
    cos, sin = w.cos[p], w.sin[p]  # [D]
    for i in range(len(w.wqkv)):
        k, v = k_cache[i, lo:hi], v_cache[i, lo:hi]  # [B, K, T, D] views
        qk, new_v = product(rms(x, w.norm1[i], w.eps), w.wqkv[i], w.onednn).split([(H + K) * D, K * D], dim=-1)
        qk = rotate(qk.view(B, H + K, D), cos, sin)  # queries and keys rotated in one go
        q = qk[:, :H].view(B, K, H // K, D)  # query head h reads kv head h // G, as in repeat_kv
        k[:, :, p] = qk[:, H:]
        v[:, :, p] = new_v.view(B, K, D)
        scores = (q @ k[:, :, : p + 1].transpose(-1, -2)) * D**-0.5  # [B, K, G, p + 1]
        a = scores.softmax(dim=-1) @ v[:, :, : p + 1]  # [B, K, G, D]
        x = product_add(x, a.reshape(B, H * D), w.wo[i], w.onednn)
        gate, up = product(rms(x, w.norm2[i], w.eps), w.w_gate_up[i], w.onednn).chunk(2, dim=-1)
        x = product_add(x, F.silu(gate) * up, w.w_down[i], w.onednn)
    return rms(x, w.norm, w.eps)


def codebooks(out: torch.Tensor, c: torch.Tensor, noise: Optional[torch.Tensor], temperature: torch.Tensor,
              top_k: torch.Tensor, k: int, same_top_k: bool, k_cache: torch.Tensor, v_cache: torch.Tensor,
              lo: int, hi: int, w: DepthWeights) -> torch.Tensor:
    """Codes 1..31 [B, 31] of rows lo..hi-1, given the decoder's output for position 1 `out` [B, dd_dim] and
    codebook 0's codes `c` [B]. Position i >= 2 holds codebook i-1's code. `noise` [B, 32, >= k] is the frame's
    Gumbel noise (None: every row greedy)."""
    codes: List[torch.Tensor] = []
    for i in range(1, 32):
        if i > 1:
            out = step_at(F.embedding(c + (i - 1) * w.vocab, w.dd_in), i, k_cache, v_cache, lo, hi, w.stack)
        logits = product(out, w.heads[i - 1], w.stack.onednn)
        if noise is None:
            c = logits.argmax(dim=-1)
        else:
            c = draw(logits, temperature, top_k, k, same_top_k, noise[:, i], w.native_topk)
        codes.append(c)
    return torch.stack(codes, dim=1)

