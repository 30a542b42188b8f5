"""A lean Llama-style forward pass over the weights transformers loaded, with per-row KV caches.

Why not call the transformers modules: every module call carries Python and mask-building overhead, and a frame
makes 32 of them (one backbone step, 31 depth-decoder steps). Here a step is a handful of tensor ops per layer,
with fused projections (q|k|v and gate|up are one matmul each) and one preallocated cache per model.

Shapes in comments: B rows (conversation slots), S new positions, T cache length, H heads, K kv heads, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from ..backends.linear import Linear, product, product_add

NUM_CODEBOOKS = 32


@dataclass
class LayerWeights:
    norm1: torch.Tensor
    wqkv: Linear  # [(H + 2K) * D, dim]
    wo: Linear  # [dim, H * D]
    norm2: torch.Tensor
    w_gate_up: Linear  # [2 * ffn, dim]
    w_down: Linear  # [dim, ffn]


class StackWeights(NamedTuple):
    """A stack's weights as tensors and numbers, for the TorchScript-compatible functions below."""

    onednn: bool  # products go through oneDNN with packed weights (backends/linear.py), else F.linear
    norm1: List[torch.Tensor]
    wqkv: List[torch.Tensor]
    wo: List[torch.Tensor]
    norm2: List[torch.Tensor]
    w_gate_up: List[torch.Tensor]
    w_down: List[torch.Tensor]
    norm: torch.Tensor
    cos: torch.Tensor  # [max_len, D]
    sin: torch.Tensor
    heads_q: int
    heads_kv: int
    head_dim: int
    eps: float


class Transformer:
    """A Llama-style decoder stack (RMSNorm, RoPE, GQA, SwiGLU) holding only tensors."""

    def __init__(self, hf_layers, hf_norm, rotary, config, max_len: int, device, dtype, backend):
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.eps = config.rms_norm_eps
        self.layers = [self._fuse(layer, device, dtype, backend) for layer in hf_layers]
        self.norm = hf_norm.weight.detach().to(device, dtype)
        # RoPE tables from transformers' own rotary module, so scaling variants (llama3) match exactly.
        with torch.no_grad():
            probe = torch.zeros(1, device=device, dtype=torch.float32)
            cos, sin = rotary.to(device)(probe, torch.arange(max_len, device=device)[None])
        self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)  # [max_len, D]
        self.weights = self._stack_weights()
        self._forward = backend.compile(forward)

    @staticmethod
    def _fuse(layer, device, dtype, backend) -> LayerWeights:
        a, m = layer.self_attn, layer.mlp
        cat = lambda *ws: backend.linear(torch.cat([w.weight.detach() for w in ws]).to(device, dtype))
        return LayerWeights(
            norm1=layer.input_layernorm.weight.detach().to(device, dtype),
            wqkv=cat(a.q_proj, a.k_proj, a.v_proj),
            wo=cat(a.o_proj),
            norm2=layer.post_attention_layernorm.weight.detach().to(device, dtype),
            w_gate_up=cat(m.gate_proj, m.up_proj),
            w_down=cat(m.down_proj),
        )

    def _stack_weights(self) -> StackWeights:
        products = lambda name: [getattr(layer, name).operand for layer in self.layers]
        return StackWeights(
            onednn=self.layers[0].wqkv.onednn, norm1=[layer.norm1 for layer in self.layers], wqkv=products("wqkv"),
            wo=products("wo"), norm2=[layer.norm2 for layer in self.layers], w_gate_up=products("w_gate_up"),
            w_down=products("w_down"), norm=self.norm, cos=self.cos, sin=self.sin, heads_q=self.heads,
            heads_kv=self.kv_heads, head_dim=self.head_dim, eps=float(self.eps),
        )

    def new_cache(self, rows: int, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(self.layers), rows, self.kv_heads, length, self.head_dim)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def forward(self, x, pos, cache, rows: slice, write_pos, mask, t_len: int) -> torch.Tensor:
        """See forward() below; `cache` is the (k, v) pair and `rows` the slice of its rows this call owns."""
        return self._forward(x, pos, cache[0], cache[1], rows.start, rows.stop, write_pos, mask, t_len,
                             self.weights)


def forward(x: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lo: int, hi: int,
            write_pos: torch.Tensor, mask: Optional[torch.Tensor], t_len: int, w: StackWeights) -> torch.Tensor:
    """x [B, S, dim]; pos [B, S] RoPE positions; caches [L, R, K, T, D] of which this call uses rows lo..hi-1
    (B of them); the new keys go to positions `write_pos` [B, S]; attention reads the first `t_len` cache
    positions with `mask` [B, 1, S, t_len] (bool, True = attend), or, when mask is None, plain causal attention
    over a cache that starts at position 0."""
    B, S = x.shape[0], x.shape[1]
    H, K, D = w.heads_q, w.heads_kv, w.head_dim
    row_idx = torch.arange(B, device=x.device)[:, None]
    cos, sin = w.cos[pos].unsqueeze(2), w.sin[pos].unsqueeze(2)  # [B, S, 1, D]
    for i in range(len(w.wqkv)):
        k_rows, v_rows = k_cache[i, lo:hi], v_cache[i, lo:hi]  # [B, K, T, D] views
        q, k, v = product(rms(x, w.norm1[i], w.eps), w.wqkv[i], w.onednn).split([H * D, K * D, K * D], dim=-1)
        q = rotate(q.view(B, S, H, D), cos, sin).transpose(1, 2)
        k = rotate(k.view(B, S, K, D), cos, sin)
        # [B, K, T, D] seen as [B, T, K, D]: one scatter writes every row's new positions.
        where: List[Optional[torch.Tensor]] = [row_idx, write_pos]
        k_rows.transpose(1, 2).index_put_(where, k)
        v_rows.transpose(1, 2).index_put_(where, v.view(B, S, K, D))
        a = attend(q, k_rows[:, :, :t_len], v_rows[:, :, :t_len], mask, H, K)
        x = product_add(x, a, w.wo[i], w.onednn)
        gate, up = product(rms(x, w.norm2[i], w.eps), w.w_gate_up[i], w.onednn).chunk(2, dim=-1)
        x = product_add(x, F.silu(gate) * up, w.w_down[i], w.onednn)
    return rms(x, w.norm, w.eps)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], H: int,
           K: int) -> torch.Tensor:
    """q [B, H, S, D] over k, v [B, K, T, D] (query head h reads kv head h // (H // K), as repeat_kv) with
    `mask` [B, 1, S, T] (None: causal, or all T for S = 1) -> [B, S, H * D].

    A decode step (S = 1) sees the G = H // K query heads of a kv head as G queries of that one head: the same
    sums, without SDPA's GQA path, which on some kernels copies every row's keys and values G times (for
    CSM-1B at 512 rows and 2048 positions, 8 GB a layer on a GPU)."""
    B, S, D = q.shape[0], q.shape[2], q.shape[3]
    if S == 1:
        a = F.scaled_dot_product_attention(q.reshape(B, K, H // K, D), k, v, attn_mask=mask)  # [B, K, G, D]
        return a.reshape(B, 1, H * D)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
    return a.transpose(1, 2).reshape(B, S, H * D)


def rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    # Statistics in float32, as transformers' CsmRMSNorm computes them.
    if x.dtype == torch.float32:
        return F.rms_norm(x, [x.shape[-1]], w, eps)
    return w * F.rms_norm(x.float(), [x.shape[-1]], None, eps).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in transformers' rotate-half layout; cos/sin broadcast over x's leading dims."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin

