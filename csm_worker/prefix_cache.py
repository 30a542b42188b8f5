"""Shared context prefixes, prefilled once per engine: the backbone KV of a conversation's leading given turns.

Conversations of a job with a cast (jobs' `--voices`) all start with the same voice-prompt turns. Their keys and
values at positions 0..P-1 depend only on those turns, so the engine computes them once, keeps a copy here, and
copies it into each new slot's cache rows, prefilling only what follows. A prefix is computed in a prefill of
its own (never as part of a longer one), so a conversation's codes are the same whether its prefix was found
here or computed: output never depends on which conversations came first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

DEFAULT_BYTES = 512 << 20  # about 50 prefixes of 10 s of voice prompts for CSM-1B in bf16


def prefix_key(spans) -> str:
    """The identity of a run of spans: their token ids and audio codes."""
    h = hashlib.sha256()
    for span in spans:
        for t in (span.tokens, span.frames):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.to("cpu", torch.int64).numpy().tobytes())
    return h.hexdigest()


class PrefixCache:
    """Backbone (keys, values) [L, K, P, D] per prefix, least recently used dropped past `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: str, k: torch.Tensor, v: torch.Tensor) -> None:
        size = _nbytes(k) + _nbytes(v)
        if size > self.max_bytes or key in self._entries:
            return
        while self.bytes + size > self.max_bytes:
            _, (old_k, old_v) = self._entries.popitem(last=False)
            self.bytes -= _nbytes(old_k) + _nbytes(old_v)
        self._entries[key] = (k.clone(), v.clone())
        self.bytes += size

    def __len__(self) -> int:
        return len(self._entries)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
