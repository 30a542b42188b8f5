"""What the engine is asked to render and what it hands back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FRAME_MS = 80  # one Mimi frame: 1920 samples at 24 kHz


@dataclass
class Segment:
    """A context utterance, as in the CSM model card: text, speaker and its audio (1-D, 24 kHz)."""

    speaker: int
    text: str
    audio: Any  # torch.Tensor or np.ndarray, 1-D float at 24 kHz


@dataclass
class TurnRequest:
    """One turn of a conversation. A turn with `audio` or `codes` is *given*: context only, not rendered
    (`codes` [32, frames] serve for turns rendered earlier, e.g. when a job resumes)."""

    turn_index: int
    speaker: int
    text: str
    audio: Any = None
    codes: np.ndarray | None = None
    temperature: float = 0.9
    top_k: int = 50
    max_audio_length_ms: int = 10_000
    seed: int = 0

    @property
    def is_given(self) -> bool:
        return self.audio is not None or self.codes is not None

    @property
    def max_frames(self) -> int:
        # Whole frames that fit in the limit, as the reference generator counts them (never over the limit).
        return max(1, int(self.max_audio_length_ms) // FRAME_MS)


@dataclass
class ConversationRequest:
    conversation_id: str
    turns: list[TurnRequest]
    tag: Any = None  # the caller's own bookkeeping, handed back untouched

    @property
    def num_to_render(self) -> int:
        return sum(not t.is_given for t in self.turns)


@dataclass
class RenderedTurn:
    conversation_id: str
    turn_index: int
    speaker: int
    text: str
    codes: np.ndarray  # [32, frames] int, the EOS frame excluded
    seed: int
    end_reason: str  # "eos" (the model ended the turn) or "max_length"
    audio: np.ndarray | None = None  # float32 at sample_rate, filled when the engine decodes audio
    sample_rate: int = 24_000
    tag: Any = None
    attempt: int = 1  # which attempt this is (engine/retries.py: later ones sample with a seed derived from `seed`)
    attempts: int = 1  # how many attempts the engine rendered before handing this one back
    quality: Any = None  # the judge's verdict on this attempt (None: no judge)
    watermark: str | None = None  # set by a watermark's finalize: "on" (marked) or "silent" (nothing to mark)

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])


@dataclass
class ConversationDone:
    """A conversation left the engine: every turn rendered (error None) or it failed (the error's text)."""

    conversation_id: str
    error: str | None = None
    error_type: str | None = None
    tag: Any = None
    turns_rendered: int = 0
