"""Top-k over a wide last dimension without torch.topk's full-row select, for the CPU sampler.

torch.topk on CPU costs ~15 us per row of 2051 codes on fresh logits, and a frame draws 32 times per row. Both
faster paths rest on one bound: split each row's V values into G groups (column j's group is j mod G) and take
each group's max. A value among the row's k largest lies in one of the k groups with the largest maxima, since
were its group outside them, k other groups would each hold a larger value.

- native_topk.py (C, when a compiler is present): ~3 us per row.
- grouped(): the same bound in torch ops, two small top-ks (~8 us per row), where no compiler is.
Both are exact; within runs of tied values they may order the tied entries differently from torch.topk (which
documents no order for ties either).
"""

from __future__ import annotations

import torch

from . import native_topk

GROUP = 8  # grouped(): values per group, so 256 groups for CSM's 2051 codes


def top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Like x.topk(k, dim=-1) for float32 x [B, V]: (values, indices) [B, k], largest first."""
    B, V = x.shape
    if x.device.type != "cpu" or x.dtype != torch.float32 or V < 2 * k * GROUP:
        return x.topk(k, dim=-1)  # on GPUs torch.topk is fast; a k this large leaves nothing to gain
    lib = native_topk.load()
    if lib is not None and x.stride(1) == 1:
        # 2k groups: the bound leaves ~70 of 2051 values for k = 50 (measured fastest of 50..256 groups).
        return native_topk.top_k(lib, x, k, 2 * k)
    return grouped(x, k)


@torch.library.custom_op("csm_render::top_k", mutates_args=())
def top_k_op(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """top_k() as torch.ops.csm_render.top_k, so TorchScript code (model/depth.py) can call it."""
    return top_k(x, k)


def grouped(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bound in torch ops: the top k groups by max, then the top-k of their k * GROUP values and the last
    V mod GROUP columns (which belong to no group)."""
    B, V = x.shape
    G = V // GROUP
    body = G * GROUP
    group_max = x[:, :body].view(B, GROUP, G).amax(dim=1)  # [B, G]
    best_groups = group_max.topk(k, dim=-1, sorted=False).indices  # [B, k]
    cols = (best_groups[:, :, None] + G * torch.arange(GROUP, device=x.device)).view(B, k * GROUP)
    if body < V:
        cols = torch.cat([cols, torch.arange(body, V, device=x.device).expand(B, V - body)], dim=1)
    values, where = x.gather(1, cols).topk(k, dim=-1)
    return values, cols.gather(1, where)
