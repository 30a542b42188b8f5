"""A decode step whose tensors have fixed shapes: what a CUDA graph captures (cuda_graphs.py), runnable on CPU.

The dynamic step (engine.py `_decode_rows`) sizes everything from Python state each step: the active rows, the
exact attention length, a SamplingParams built from lists. A CUDA graph replays fixed kernels on fixed
addresses, so here:
- all B slots run every step; an inactive row computes on dummy inputs (position 0, greedy) and its codes are
  ignored. Its cache writes are harmless: a free row's cache holds nothing, and the next conversation in it
  prefills from position 0;
- the attention length is bucketed (BUCKET positions, up to the window), so a few graphs cover every length;
  positions past a row's own are masked out;
- the top-k width is bucketed too (powers of two up to the vocabulary): rows keep their own top_k by masking;
- so is the number of rows a step runs: the slots up to the highest active one, rounded up to a power of two
  (the engine moves rows down as slots free up, engine.py `_compact`), so a job's tail, when few conversations
  are left, does not pay for all B slots;
- every input lives in a preallocated buffer on the device (positions, frame counters, sampling settings, the
  active mask), written only when a row starts or ends a turn; positions and frame counters advance on the
  device, and noise is hashed from them there, so a step needs no host sync or Python state.

A step is two zero-argument functions per bucket, made once and replayed: `sample` (codebook 0 and the whole
31-step depth decoder with sampling: h -> codes) and `feed` (the backbone step: codes -> h, then advance). Each
reads and writes the first R rows of the buffers (views made once, so a graph's addresses stay fixed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..model.sampling import SamplingParams, effective

BUCKET = 256  # attention length granularity: at most 255 masked positions of extra work, 8 buckets for 2048


def length_bucket(t_len: int, window: int) -> int:
    """The attention length a step that needs `t_len` positions runs with: t_len rounded up to BUCKET."""
    return min(window, -(-t_len // BUCKET) * BUCKET)


def row_bucket(hi: int, rows: int) -> int:
    """How many slots a step whose highest active slot is hi - 1 runs: hi rounded up to a power of two."""
    return min(rows, 1 << max(0, hi - 1).bit_length())


def top_k_bucket(top_k: int, vocab: int) -> int:
    """The top-k width a step whose rows keep at most `top_k` candidates runs with: a power of two."""
    return min(vocab, 1 << max(0, top_k - 1).bit_length())


@dataclass
class StepBuffers:
    """The step's inputs and outputs, one row per slot, on the model's device."""

    pos: torch.Tensor  # [B] long: where the row's next frame goes
    frame_index: torch.Tensor  # [B] long: the frame's number within its turn (keys the noise)
    active: torch.Tensor  # [B] bool: the row is rendering a turn
    temperature: torch.Tensor  # [B] float32
    top_k: torch.Tensor  # [B] long, >= 1
    seed: torch.Tensor  # [B] long
    codes: torch.Tensor  # [B, 32] long: the frame sampled by the last step

    @classmethod
    def allocate(cls, rows: int, codebooks: int, device) -> "StepBuffers":
        long = lambda: torch.zeros(rows, dtype=torch.long, device=device)
        return cls(pos=long(), frame_index=long(), active=torch.zeros(rows, dtype=torch.bool, device=device),
                   temperature=torch.ones(rows, device=device), top_k=torch.ones_like(long()), seed=long(),
                   codes=torch.zeros(rows, codebooks, dtype=torch.long, device=device))

    def state(self) -> list[torch.Tensor]:
        """What a step changes besides the caches and h (see StaticStep.state)."""
        return [self.pos, self.frame_index, self.codes]

    def move(self, src: int, dst: int) -> None:
        """Row src's settings and state into row dst (the engine moved its conversation there)."""
        for t in (self.pos, self.frame_index, self.active, self.temperature, self.top_k, self.seed, self.codes):
            t[dst] = t[src]


class StaticStep:
    """The engine's decode step over all `h.shape[0]` slots, with fixed shapes. `run_fn(key, make)` turns each
    bucket's function into what runs it: the function itself (eager), or a CUDA graph of it (cuda_graphs.py)."""

    def __init__(self, model, caches: dict, h: torch.Tensor, run_fn: Callable | None = None):
        self.model, self.caches, self.h = model, caches, h
        self.rows = h.shape[0]
        self.buf = StepBuffers.allocate(self.rows, model.num_codebooks, model.device)
        self.run_fn = run_fn or (lambda key, make, state: make())
        self._fns: dict[tuple, Callable[[], None]] = {}

    # -- rows (between steps; small host-to-device writes) ---------------------------------------------------
    def start_turn(self, row: int, pos: int, temperature: float, top_k: int, seed: int) -> None:
        temperature, top_k = effective(temperature, top_k)
        b = self.buf
        b.pos[row], b.frame_index[row], b.active[row] = pos, 0, True
        b.temperature[row], b.top_k[row], b.seed[row] = temperature, top_k, seed

    def move(self, src: int, dst: int) -> None:
        """Row src's turn now runs in row dst (whose KV cache the engine copied); src is free."""
        self.buf.move(src, dst)
        self.free(src)

    def free(self, row: int) -> None:
        b = self.buf
        b.pos[row], b.frame_index[row], b.active[row] = 0, 0, False
        b.temperature[row], b.top_k[row], b.seed[row] = 1.0, 1, 0

    # -- the step ---------------------------------------------------------------------------------------------
    def run(self, t_len: int, max_top_k: int, hi: int | None = None) -> torch.Tensor:
        """One frame for every row below `hi` (default: all): codes [B, 32] (the buffer; rows not active hold
        junk). `t_len` is the attention length the active rows need, `max_top_k` their largest top_k, `hi` one
        past the highest active row (Python ints all)."""
        r = row_bucket(hi or self.rows, self.rows)
        k = top_k_bucket(max_top_k, self.model.vocab)
        self._fn(("sample", r, k), lambda: self._sample_fn(r, k))()
        t = length_bucket(t_len, self.model.window)
        self._fn(("feed", r, t), lambda: self._feed_fn(r, t))()
        return self.buf.codes

    def state(self) -> list[torch.Tensor]:
        """Everything a step's function writes that a trial run of it (a CUDA graph's warm-up) must give back:
        the buffers and h. Cache writes need no undoing: a row's next step rewrites its position before any
        attention reads it, and the depth decoder's cache is rewritten every frame."""
        return [self.h, *self.buf.state()]

    def _fn(self, key: tuple, make: Callable[[], Callable[[], None]]) -> Callable[[], None]:
        if key not in self._fns:
            self._fns[key] = self.run_fn(key, make, self.state())
        return self._fns[key]

    def _sample_fn(self, r: int, k: int) -> Callable[[], None]:
        """h -> codes for rows 0..r-1. The params hold views of the buffers, so a replay reads the current
        settings; every row takes the masked top-k path (no Python branch on the rows' values)."""
        b, rows, h, codes, frame_index = self.buf, slice(0, r), self.h[:r], self.buf.codes[:r], self.buf.frame_index[:r]
        params = SamplingParams(b.temperature[:r], b.top_k[:r], b.seed[:r], max_top_k=k, all_greedy=False,
                                same_top_k=False)

        def sample() -> None:
            codes.copy_(self.model.sample_frame(self.caches, rows, h, params, frame_index))

        return sample

    def _feed_fn(self, r: int, t_len: int) -> Callable[[], None]:
        """codes -> h for rows 0..r-1 at their positions, attention over `t_len` (masked); then active rows
        advance."""
        rows, h, codes, pos = slice(0, r), self.h[:r], self.buf.codes[:r], self.buf.pos[:r]
        active, frame_index = self.buf.active[:r], self.buf.frame_index[:r]

        def feed() -> None:
            h.copy_(self.model.decode(self.caches, rows, codes, pos, t_len, exact_len=False))
            pos.add_(active.long())
            frame_index.add_(active.long())

        return feed
