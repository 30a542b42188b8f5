"""How many conversation slots fit on a GPU (`--batch-size auto`): from free memory, what each slot's KV caches
take, and what a decode step's temporaries (the CUDA graphs' shared pool) take per slot.

A slot costs its caches for good (the backbone's 2048 positions dominate: 64 MiB a row for CSM-1B in bf16) and,
while a step runs, its share of the step's temporaries. All graphs share one pool and replay one at a time, so
the pool holds one step's temporaries at the largest bucket, not one per graph. The estimate of those
temporaries is an upper bound from the shapes (below); the device check (scripts/gpu_check.sh) records the
measured peak beside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .prefix_cache import DEFAULT_BYTES as PREFIX_CACHE_BYTES

log = logging.getLogger(__name__)

GIB = 2**30
RESERVE_BYTES = 2 * GIB  # Mimi decoding finished turns, prefills, allocator slack and cuBLAS workspaces
FREE_FRACTION = 0.9  # of free memory after the reserve; the rest absorbs fragmentation
MAX_SLOTS = 512  # past this a step is long enough that more rows add little throughput and much latency


@dataclass(frozen=True)
class SlotBudget:
    """What `--batch-size auto` chose and why, in bytes."""

    slots: int
    free: int
    cache_per_slot: int
    step_per_slot: int
    reserve: int
    prefix_cache: int = 0

    def describe(self) -> str:
        mib = lambda b: f"{b / 2**20:.1f} MiB"
        return (f"{self.slots} slots: free {self.free / GIB:.1f} GiB - {self.reserve / GIB:.1f} GiB reserved "
                f"- {mib(self.prefix_cache)} prefix cache, x {FREE_FRACTION}, / ({mib(self.cache_per_slot)} KV "
                f"cache + {mib(self.step_per_slot)} step temporaries per slot), at most {MAX_SLOTS}")


def step_bytes_per_slot(model) -> int:
    """An upper bound on one slot's share of a decode step's temporaries, at the longest attention bucket.

    Backbone attention reads the cache in place (transformer.attend never expands the kv heads); a kernel that
    materialises scores keeps them and their softmax in float32, window positions per query head. The MLP holds
    gate|up and their product. The draws hold 32 codebooks of float32 logits (and their scaled copy) and
    float64 noise. The depth decoder's own temporaries are smaller (33 positions, a narrower stack)."""
    elem = torch.finfo(model.dtype).bits // 8
    bb = model.backbone
    attention = 2 * bb.heads * model.window * 4
    ffn = bb.layers[0].w_gate_up.out_features  # 2 x intermediate size
    mlp = 2 * ffn * elem + 4 * model.dim * elem
    draws = model.num_codebooks * (model.vocab * 4 * 2 + model.vocab * 8)
    return attention + mlp + draws


def plan_slots(free: int, cache_per_slot: int, step_per_slot: int, reserve: int = RESERVE_BYTES,
               prefix_cache: int = 0) -> SlotBudget:
    usable = max(0, int((free - reserve - prefix_cache) * FREE_FRACTION))
    slots = max(1, min(MAX_SLOTS, usable // (cache_per_slot + step_per_slot)))
    return SlotBudget(slots, free, cache_per_slot, step_per_slot, reserve, prefix_cache)


def auto_slots(model, prefix_cache_bytes: int = PREFIX_CACHE_BYTES) -> SlotBudget:
    """The slot count for `model` on its CUDA device, from the memory free now (weights already loaded), with
    `prefix_cache_bytes` (the engine's prefix cache limit) set aside."""
    free, _ = torch.cuda.mem_get_info(model.device)
    budget = plan_slots(free, model.cache_bytes_per_row(), step_bytes_per_slot(model), prefix_cache=prefix_cache_bytes)
    log.info("--batch-size auto: %s", budget.describe())
    return budget
