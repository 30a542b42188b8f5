"""Progress on the driver: conversations and turns done, audio seconds rendered, realtime factor, ETA."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(self, total_turns: int, conversations: int, stream=sys.stderr):
        self.started = time.monotonic()
        self.audio_s = 0.0
        self.conversations, self.conv_done, self.conv_failed = conversations, 0, 0
        self.worker_state = ""
        # tqdm computes the ETA from the turn rate; it redraws at most a few times a second.
        self.bar = tqdm(total=total_turns, unit="turn", file=stream, dynamic_ncols=True, mininterval=0.5,
                        disable=None)
        self._postfix()

    def turn(self, duration_s: float) -> None:
        self.audio_s += duration_s
        self.bar.update(1)
        self._postfix()

    def conversation(self, failed: bool) -> None:
        self.conv_done += 1
        self.conv_failed += failed
        self._postfix()

    def workers(self, state: str) -> None:
        """Per-worker state in a few words, e.g. "workers 3 rendering, 1 starting"."""
        if state != self.worker_state:
            self.worker_state = state
            self._postfix()

    def refresh(self) -> None:
        self.bar.refresh()

    def _postfix(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix_str(
            f"conv {self.conv_done}/{self.conversations} failed {self.conv_failed} | "
            f"audio {self.audio_s:.1f}s | rtf {self.audio_s / elapsed:.2f}"
            + (f" | {self.worker_state}" if self.worker_state else ""), refresh=False)

    def close(self) -> None:
        self.bar.close()
