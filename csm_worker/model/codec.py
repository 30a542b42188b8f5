"""Mimi, the audio codec: given voice prompts are encoded once (cached by content), rendered turns decoded in
batches."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from ..audio import content_hash

SAMPLES_PER_FRAME = 1920  # 24 kHz / 12.5 frames per second


class Codec:
    def __init__(self, mimi, codebook_size: int = 2048, cache_entries: int = 256):
        self.mimi = mimi.eval()
        self.device = next(mimi.parameters()).device
        self.codebook_size = codebook_size
        self._encoded: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_entries = cache_entries

    @torch.no_grad()
    def encode(self, audio) -> np.ndarray:
        """1-D float audio at 24 kHz -> codes [32, frames] (int64). Cached by content hash: a voice prompt used by
        every conversation of a job is encoded once per worker."""
        samples = np.ascontiguousarray(_as_numpy(audio), dtype=np.float32)
        key = content_hash(samples)
        if key in self._encoded:
            self._encoded.move_to_end(key)
            return self._encoded[key]
        x = torch.from_numpy(samples).to(self.device)[None, None]
        codes = self.mimi.encode(x).audio_codes[0].cpu().numpy()  # [32, frames]
        self._encoded[key] = codes
        if len(self._encoded) > self._cache_entries:
            self._encoded.popitem(last=False)
        return codes

    @torch.no_grad()
    def decode_many(self, codes_list: list[np.ndarray]) -> list[np.ndarray]:
        """Decode several turns in one batch. Mimi's decoder is causal, so right-padding a shorter turn does not
        change its samples; each result is cut back to its own length."""
        if not codes_list:
            return []
        longest = max(c.shape[1] for c in codes_list)
        if longest == 0:
            return [np.zeros(0, dtype=np.float32) for _ in codes_list]
        batch = np.zeros((len(codes_list), codes_list[0].shape[0], longest), dtype=np.int64)
        for i, c in enumerate(codes_list):
            batch[i, :, : c.shape[1]] = c
        # CSM's vocabulary (2051) is larger than Mimi's codebooks (2048); real weights never emit the extra ids,
        # random presets can. Map them to code 0 so noise presets still decode.
        batch[batch >= self.codebook_size] = 0
        audio = self.mimi.decode(torch.from_numpy(batch).to(self.device)).audio_values[:, 0].float().cpu().numpy()
        return [audio[i, : c.shape[1] * SAMPLES_PER_FRAME].copy() for i, c in enumerate(codes_list)]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.decode_many([codes])[0]


def _as_numpy(audio) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"context audio must be 1-D (mono, 24 kHz), got shape {audio.shape}")
    return audio
