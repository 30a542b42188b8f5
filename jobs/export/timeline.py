"""Where each turn lands in a conversation's stitched file: every turn, then its pause of silence.

Positions are whole samples at 24 kHz, so the audio and the captions share one exact timeline: a turn starts at
the sum of the samples and pauses before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.export.reader import SAMPLE_RATE, Turn


@dataclass(frozen=True)
class Placement:
    turn: Turn
    start: int  # first sample of the turn in the stitched file
    end: int  # one past its last sample
    pause: int  # samples of silence after it

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


def pause_samples(pause_ms: int) -> int:
    return pause_ms * SAMPLE_RATE // 1000  # 24 samples a millisecond: exact for whole milliseconds


def place(turns: list[Turn], default_pause_ms: int) -> list[Placement]:
    out, at = [], 0
    for turn in turns:
        pause = pause_samples(default_pause_ms if turn.pause_ms is None else turn.pause_ms)
        out.append(Placement(turn, at, at + turn.num_samples, pause))
        at += turn.num_samples + pause
    return out


def total_samples(placements: list[Placement]) -> int:
    return placements[-1].end + placements[-1].pause if placements else 0
