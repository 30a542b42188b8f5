"""Per-row top-k / temperature sampling with counter-based randomness.

Each row draws its noise from a hash of (turn seed, draw counter, candidate rank) instead of a shared generator,
so a turn's samples depend only on its own seed and logits: never on which other conversations share the batch,
nor on the device. Greedy rows (top_k == 1) take the plain argmax, which is what parity tests compare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.cpu import topk  # noqa: F401  (registers torch.ops.csm_render.top_k)

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # a well-mixing 32-bit multiplier (< 2**31, so products stay inside int64)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # x holds values in [0, 2**32) in int64; two multiply-xorshift rounds (a standard 32-bit integer hash).
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    x = x ^ (x >> 16)
    x = (x * _MUL) & _M32
    return x ^ (x >> 16)


def uniform(seed: torch.Tensor, counter: torch.Tensor, width: int) -> torch.Tensor:
    """[*counter.shape, width] floats in (0, 1), a pure function of (seed [B], counter [B, ...], column)."""
    seed = seed.to(torch.int64).view(-1, *([1] * (counter.dim() - 1)))
    seed_key = (seed & _M32) ^ _mix32((seed >> 32) & _M32)
    key = _mix32(seed_key ^ _mix32((counter.to(torch.int64) * 0x9E3779B1) & _M32))
    cols = _mix32(torch.arange(width, device=seed.device, dtype=torch.int64) + 0x632BE5AB)
    bits = _mix32(key[..., None] ^ cols)
    return (bits.to(torch.float64) + 0.5) / 4294967296.0


def gumbel(seed: torch.Tensor, counter: torch.Tensor, width: int) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like uniform(); computed in float64 so no draw rounds to exactly 0 or 1."""
    return (-torch.log(-torch.log(uniform(seed, counter, width)))).float()


@dataclass
class SamplingParams:
    """Per-row sampling settings as tensors on the model's device."""

    temperature: torch.Tensor  # [B] float
    top_k: torch.Tensor  # [B] long, >= 1
    seed: torch.Tensor  # [B] long
    max_top_k: int  # max over the rows (a Python int, so topk needs no device sync)
    all_greedy: bool
    same_top_k: bool = False  # every row keeps max_top_k candidates (the usual case: one job default)

    def frame_noise(self, frame_index: torch.Tensor, draws: int) -> torch.Tensor | None:
        """Gumbel noise for a whole frame at once, [B, draws, max_top_k]: draw j of frame f uses counter
        f * draws + j, so a turn's noise depends only on its seed, frame and codebook."""
        if self.all_greedy:
            return None
        counter = frame_index[:, None] * draws + torch.arange(draws, device=frame_index.device)
        return gumbel(self.seed, counter, self.max_top_k)

    @classmethod
    def build(cls, temperatures, top_ks, seeds, device) -> "SamplingParams":
        top_k = [effective(t, k)[1] for t, k in zip(temperatures, top_ks)]
        return cls(
            temperature=torch.tensor([effective(t, 1)[0] for t in temperatures], device=device,
                                     dtype=torch.float32),
            top_k=torch.tensor(top_k, device=device, dtype=torch.long),
            seed=torch.tensor([int(s) for s in seeds], device=device, dtype=torch.long),
            max_top_k=max(top_k),
            all_greedy=all(k == 1 for k in top_k),
            same_top_k=len(set(top_k)) == 1,
        )


def effective(temperature: float, top_k: int) -> tuple[float, int]:
    """What a row's (temperature, top_k) mean to the sampler. Temperature 0 means "no randomness": greedy, like
    top_k 1 (dividing by it would give NaN logits), and a top_k below 1 keeps one candidate."""
    top_k = 1 if float(temperature) <= 0 else max(1, int(top_k))
    return max(float(temperature), 1e-5), top_k


def sample(logits: torch.Tensor, params: SamplingParams, noise: torch.Tensor | None,
           native_topk: bool = True) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. `noise` [B, >= max_top_k] is this draw's Gumbel noise per candidate rank
    (see gumbel()); None when every row is greedy."""
    if params.all_greedy:
        return logits.argmax(dim=-1)
    k = min(params.max_top_k, logits.shape[-1])
    return draw(logits, params.temperature, params.top_k, k, params.same_top_k, noise, native_topk)


def draw(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, k: int, same_top_k: bool,
         noise: torch.Tensor, native_topk: bool = True) -> torch.Tensor:
    """sample()'s draw for rows that are not all greedy, on tensors and numbers only, so that the scripted depth
    decoder (depth.py) runs it too. k = max(top_k), at most V. `native_topk`: the CPU backend's top-k op
    (backends/cpu/topk.py), else plain torch.topk (the portable backend: what a CUDA graph captures)."""
    # Dividing by a positive temperature keeps the order, so only the k kept values need it.
    if native_topk:
        values, indices = torch.ops.csm_render.top_k(logits.float(), k)  # [B, k], sorted descending
    else:
        values, indices = logits.float().topk(k, dim=-1)
    values = values / temperature[:, None]
    # Gumbel-max over each row's own top-k candidates: argmax(v + g) samples softmax(v).
    if not same_top_k:  # rows keep different numbers of candidates
        ranks = torch.arange(k, device=logits.device)
        values = values.masked_fill(ranks[None, :] >= top_k[:, None], float("-inf"))
    choice = (values + noise[:, :k]).argmax(dim=-1, keepdim=True)
    # A greedy row (top_k 1) has a single candidate: its argmax, whatever the noise.
    return indices.gather(1, choice).squeeze(1)
