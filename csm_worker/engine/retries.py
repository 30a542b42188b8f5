"""Re-rendering a turn that fails its checks, before the next turn hears it: the attempts' seeds and which one is kept.

A judge (the caller's: e.g. csm_worker/quality/judge.py) looks at each rendered attempt and says whether it passed
and how bad it is. A failed turn is sampled again from the same context with another seed, up to the caller's
retries; the first attempt that passes is kept, else the least bad (the earliest among equals). Seeds come from
the turn's seed and the attempt number alone, so a resumed job, or another worker, draws the same attempts and
keeps the same one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .requests import RenderedTurn


class Verdict(Protocol):
    passed: bool

    @property
    def badness(self) -> float:
        """Lower is better; compared between attempts of one turn."""


Judge = Callable[[list[RenderedTurn]], list[Verdict]]  # one verdict per turn, in order (a batch: ASR can batch)


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed attempt `attempt` (1-based) of a turn samples with: the turn's own for the first, then a hash of
    (seed, attempt) in [0, 2**63), unrelated to the seeds of neighbouring turns (turn seeds are often consecutive)."""
    if attempt <= 1:
        return int(seed)
    digest = hashlib.blake2b(f"csm-render attempt {int(seed)} {int(attempt)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class Attempts:
    """A turn's attempts so far: how many were rendered and the one to keep."""

    count: int = 0
    best: RenderedTurn | None = None
    best_badness: float = float("inf")

    def add(self, turn: RenderedTurn, verdict: Any) -> None:
        self.count += 1
        badness = 0.0 if verdict is None else (0.0 if verdict.passed else float(verdict.badness))
        if self.best is None or badness < self.best_badness:  # strictly better: the earlier attempt wins ties
            self.best, self.best_badness = turn, badness
        turn.quality = verdict
