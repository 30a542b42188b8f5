"""Planning: which conversations still need work, with what settings, longest first.

Committed turns are skipped; a partly done conversation continues from its last committed turn, with the stored
codes of its earlier turns as context. Seeds not given in the manifest are derived from (job seed, conversation,
turn), so a re-run renders a turn exactly as the interrupted run would have.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from jobs.manifests.manifest import ConversationSpec, TurnSpec


@dataclass(frozen=True)
class Defaults:
    temperature: float = 0.9
    top_k: int = 50
    max_audio_length_ms: int = 10_000
    seed: int = 0  # the job seed; each turn's own seed derives from it

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "top_k": self.top_k,
                "max_audio_length_ms": self.max_audio_length_ms, "seed": self.seed}


@dataclass
class WorkItem:
    spec: ConversationSpec
    committed: set[int] = field(default_factory=set)  # turn indices already committed in OUT

    @property
    def conversation_id(self) -> str:
        return self.spec.conversation_id

    @property
    def remaining(self) -> list[TurnSpec]:
        return [t for t in self.spec.turns if not t.is_given and t.turn_index not in self.committed]

    @property
    def expected_cost(self) -> int:
        # Speech length follows text length; the remaining text is the best cheap estimate of render time.
        return sum(len(t.text) for t in self.remaining)


def turn_seed(job_seed: int, conversation_id: str, turn_index: int) -> int:
    digest = hashlib.sha256(f"{job_seed}\x00{conversation_id}\x00{turn_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: fits int64 everywhere


def settings_for(turn: TurnSpec, defaults: Defaults) -> dict:
    """The sampling settings a turn renders with: the manifest's values, else the job defaults."""
    pick = lambda value, default: default if value is None else value
    return {
        "temperature": float(pick(turn.temperature, defaults.temperature)),
        "top_k": int(pick(turn.top_k, defaults.top_k)),
        "max_audio_length_ms": int(pick(turn.max_audio_length_ms, defaults.max_audio_length_ms)),
        "seed": int(pick(turn.seed, turn_seed(defaults.seed, turn.conversation_id, turn.turn_index))),
    }


def plan(conversations: list[ConversationSpec], committed: dict[str, set[int]]) -> tuple[list[WorkItem], int]:
    """Work items for conversations with turns left to render (longest first, so the tail of the job is short),
    and the number of conversations already complete."""
    items = [WorkItem(c, set(committed.get(c.conversation_id, ()))) for c in conversations]
    todo = [w for w in items if w.remaining]
    todo.sort(key=lambda w: (-w.expected_cost, w.conversation_id))
    return todo, len(items) - len(todo)
