"""A lean Llama-style forward pass over the weights transformers loaded, with per-row KV caches.

Why not call the transformers modules: every module call carries Python and mask-building overhead, and a frame
makes 32 of them (one backbone step, 31 depth-decoder steps). Here a step is a handful of tensor ops per layer,
with fused projections (q|k|v and gate|up are one matmul each) and one preallocated cache per model.

Shapes in comments: B rows (conversation slots), S new positions, T cache length, H heads, K kv heads, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .depth import rotate
from .linear import Linear

NUM_CODEBOOKS = 32


@dataclass
class LayerWeights:
    norm1: torch.Tensor
    wqkv: Linear  # [(H + 2K) * D, dim]
    wo: Linear  # [dim, H * D]
    norm2: torch.Tensor
    w_gate_up: Linear  # [2 * ffn, dim]
    w_down: Linear  # [dim, ffn]


class Transformer:
    """A Llama-style decoder stack (RMSNorm, RoPE, GQA, SwiGLU) holding only tensors."""

    def __init__(self, hf_layers, hf_norm, rotary, config, max_len: int, device, dtype):
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.eps = config.rms_norm_eps
        self.layers = [self._fuse(layer, device, dtype) for layer in hf_layers]
        self.norm = hf_norm.weight.detach().to(device, dtype)
        # RoPE tables from transformers' own rotary module, so scaling variants (llama3) match exactly.
        with torch.no_grad():
            probe = torch.zeros(1, device=device, dtype=torch.float32)
            cos, sin = rotary.to(device)(probe, torch.arange(max_len, device=device)[None])
        self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)  # [max_len, D]

    @staticmethod
    def _fuse(layer, device, dtype) -> LayerWeights:
        a, m = layer.self_attn, layer.mlp
        cat = lambda *ws: Linear(torch.cat([w.weight.detach() for w in ws]).to(device, dtype))
        return LayerWeights(
            norm1=layer.input_layernorm.weight.detach().to(device, dtype),
            wqkv=cat(a.q_proj, a.k_proj, a.v_proj),
            wo=cat(a.o_proj),
            norm2=layer.post_attention_layernorm.weight.detach().to(device, dtype),
            w_gate_up=cat(m.gate_proj, m.up_proj),
            w_down=cat(m.down_proj),
        )

    def new_cache(self, rows: int, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(self.layers), rows, self.kv_heads, length, self.head_dim)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # One fused op; statistics in float32 as transformers' CsmRMSNorm computes them.
        if x.dtype == torch.float32:
            return F.rms_norm(x, w.shape, w, self.eps)
        return w * F.rms_norm(x.float(), w.shape, None, self.eps).to(x.dtype)

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # x [B, S, n, D], pos [B, S]
        return rotate(x, self.cos[pos].unsqueeze(2), self.sin[pos].unsqueeze(2))

    def forward(self, x, pos, cache, rows: slice, write_pos, mask, t_len: int) -> torch.Tensor:
        """x [B, S, dim]; pos [B, S] RoPE positions; cache (k, v) [L, R, K, T, D] of which this call uses the
        contiguous `rows` (B of them); the new keys go to positions `write_pos` [B, S]; attention reads the
        first `t_len` cache positions with `mask` [B, 1, S, t_len] (bool, True = attend), or, when mask is None,
        plain causal attention over a cache that starts at position 0."""
        B, S, _ = x.shape
        H, K, D = self.heads, self.kv_heads, self.head_dim
        row_idx = torch.arange(B, device=x.device)[:, None]
        for i, w in enumerate(self.layers):
            k_cache, v_cache = cache[0][i, rows], cache[1][i, rows]  # [B, K, T, D] views
            h = self.rms(x, w.norm1)
            q, k, v = w.wqkv(h).split([H * D, K * D, K * D], dim=-1)
            q = self.rope(q.view(B, S, H, D), pos).transpose(1, 2)
            k = self.rope(k.view(B, S, K, D), pos)
            # [B, K, T, D] seen as [B, T, K, D]: one scatter writes every row's new positions.
            k_cache.transpose(1, 2).index_put_((row_idx, write_pos), k)
            v_cache.transpose(1, 2).index_put_((row_idx, write_pos), v.view(B, S, K, D))
            a = F.scaled_dot_product_attention(
                q, k_cache[:, :, :t_len], v_cache[:, :, :t_len], attn_mask=mask,
                is_causal=mask is None and S > 1, enable_gqa=True,
            )
            x = w.wo.add(x, a.transpose(1, 2).reshape(B, S, H * D))
            gate, up = w.w_gate_up(self.rms(x, w.norm2)).chunk(2, dim=-1)
            x = w.w_down.add(x, F.silu(gate) * up)
        return self.rms(x, self.norm)

