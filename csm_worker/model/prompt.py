"""How turns become backbone positions: `[speaker]text` tokens between BOS and EOS, then audio frames.

A context turn contributes its text tokens, its audio frames and one all-zero EOS frame, exactly as the
reference generator lays out a `Segment`. A turn to render contributes its text tokens; its frames are generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


class TextEncoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos = self._special(BOS, tokenizer.bos_token_id)
        self.eos = self._special(EOS, tokenizer.eos_token_id)

    def _special(self, token: str, fallback: int | None) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            tid = fallback
        if tid is None:
            raise ValueError(f"the tokenizer has no {token} token, which CSM needs")
        return int(tid)

    def encode(self, speaker: int, text: str) -> list[int]:
        return [self.bos, *self.tokenizer.encode(f"[{speaker}]{text}", add_special_tokens=False), self.eos]

    def positions(self, speaker: int, text: str) -> int:
        return len(self.encode(speaker, text))

    def counter(self):
        """positions() with a `many` attribute: what manifest validation takes to count in batches."""
        count = self.positions
        count_fn = lambda speaker, text: count(speaker, text)
        count_fn.many = self.positions_many
        return count_fn

    def positions_many(self, speakers: list[int], texts: list[str]) -> list[int]:
        """positions() for many turns in one batched tokenizer call."""
        if not texts:
            return []
        prompts = [f"[{s}]{t}" for s, t in zip(speakers, texts)]
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # skips transformers' per-row wrapping
        if backend is not None:
            return [len(e.ids) + 2 for e in backend.encode_batch(prompts, add_special_tokens=False)]  # + BOS, EOS
        return [len(x) + 2 for x in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def word_bound_counter():
    """A counter of backbone positions that needs no tokenizer, and never counts more than the tokenizer would:
    one position a whitespace-separated word of `[speaker]text`, plus BOS and EOS. Llama-3's pre-tokenizer (and the
    presets' byte-level one) never joins characters of two such words into one token, so every word is at least
    one token. It is marked `lower_bound`, so a turn refused by it is refused in words that say so."""
    count_fn = lambda speaker, text: len(f"[{speaker}]{text}".split()) + 2  # noqa: E731
    count_fn.many = lambda speakers, texts: [count_fn(s, t) for s, t in zip(speakers, texts)]
    count_fn.lower_bound = True
    return count_fn


@dataclass
class Span:
    """A stretch of context: text tokens followed by audio frames (codes [n, 32], EOS frame included)."""

    tokens: torch.Tensor  # [t] long
    frames: torch.Tensor  # [n, 32] long
    given: bool  # given turns (voice prompts) are never dropped when the window fills up

    def __len__(self) -> int:
        return self.tokens.numel() + self.frames.shape[0]


def span_for(tokens: list[int], codes, given: bool, device) -> Span:
    """codes [32, n] of a finished or given turn -> a span with the EOS frame appended."""
    frames = torch.as_tensor(codes, dtype=torch.long, device=device).reshape(32, -1).T
    eos = torch.zeros(1, 32, dtype=torch.long, device=device)
    return Span(torch.tensor(tokens, dtype=torch.long, device=device), torch.cat([frames, eos]), given)


def embed_spans(model, spans: list[Span], last_positions: int | None = None) -> torch.Tensor:
    """Embeddings [n, dim] of the spans laid end to end; only the last `last_positions` when given."""
    parts = []
    for span in spans:
        if span.tokens.numel():
            parts.append(model.embed_text(span.tokens))
        if span.frames.shape[0]:
            parts.append(model.embed_frames(span.frames))
    out = torch.cat(parts)
    return out if last_positions is None else out[out.shape[0] - last_positions :]
