"""Shared context prefixes, prefilled once per engine: the backbone KV of a conversation's leading given turns.

Conversations of a job with a cast (jobs' `--voices`) start with the voice-prompt turns of the speakers they use.
The keys and values of a prompt depend only on it and on the prompts before it, so the engine keeps them here
one span at a time, keyed by the chain of spans up to and including it (chain_key), and copies them into each
new slot's cache rows. Conversations that share only their first prompts (a narrator, then one of several
guests) share those. Each span is always prefilled on its own, on top of exactly the spans before it, so its
keys and values are the same bits whether they were found here or computed: a conversation's codes never
depend on which conversations came first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

DEFAULT_BYTES = 512 << 20  # about 50 prefixes of 10 s of voice prompts for CSM-1B in bf16


def chain_key(before: str, span) -> str:
    """The identity of `span` after the spans whose chain_key is `before` ("" for the first): its token ids and
    audio codes, and everything before it."""
    h = hashlib.sha256(before.encode())
    for t in (span.tokens, span.frames):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.to("cpu", torch.int64).numpy().tobytes())
    return h.hexdigest()


class PrefixCache:
    """Backbone (keys, values) [L, K, P, D] per span of a prefix (P its positions), least recently used dropped
    past `max_bytes`."""

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
