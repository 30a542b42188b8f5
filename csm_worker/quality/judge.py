"""Judges for the engine's retries (engine/retries.py): a batch of rendered turns in, one verdict per turn out."""

from __future__ import annotations

from collections.abc import Callable

from .checks import Thresholds, TurnQuality, check_turn


def checks_judge(thresholds: Thresholds = Thresholds()) -> Callable[[list], list[TurnQuality]]:
    """The always-on checks (checks.py) of each turn: its audio, its text and how the engine ended it."""

    def judge(turns: list) -> list[TurnQuality]:
        return [check_turn(t.audio, t.sample_rate, t.text, t.end_reason, thresholds) for t in turns]

    return judge
