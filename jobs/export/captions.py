"""Captions on the stitched file's timeline: one cue per turn (speaker label, text, the turn's start and end), as
SRT, WebVTT and a JSON timeline for editors. Times come from the same sample positions the audio is built from."""

from __future__ import annotations

import json

from jobs.export.timeline import Placement
from jobs.export.reader import SAMPLE_RATE


def speaker_label(turn) -> str:
    """The cast voice's name when the job had one for this turn (`--voices`), else "Speaker N"."""
    name = (turn.row or {}).get("voice_name")
    return name or f"Speaker {turn.speaker}"


def _ms(samples: int) -> int:
    return samples * 1000 // SAMPLE_RATE  # floor: a cue never starts before its sound; exact at 24 per ms


def _clock(samples: int, sep: str) -> str:
    ms = _ms(samples)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _one_line(text: str) -> str:
    # A blank line ends a cue in both formats, and "-->" would read as a timing line: keep the text on one line.
    return " ".join(text.split()).replace("-->", "->")


def srt(placements: list[Placement]) -> str:
    cues = [f"{n}\n{_clock(p.start, ',')} --> {_clock(p.end, ',')}\n{speaker_label(p.turn)}: "
            f"{_one_line(p.turn.text)}\n" for n, p in enumerate(placements, start=1)]
    return "\n".join(cues)


def webvtt(placements: list[Placement]) -> str:
    cues = [f"turn-{p.turn.turn_index}\n{_clock(p.start, '.')} --> {_clock(p.end, '.')}\n"
            f"<v {_escape(speaker_label(p.turn))}>{_escape(_one_line(p.turn.text))}\n" for p in placements]
    return "WEBVTT\n\n" + "\n".join(cues)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def timeline(conversation_id: str, placements: list[Placement], source: str) -> dict:
    return {
        "conversation_id": conversation_id, "sample_rate": SAMPLE_RATE, "source": source,
        "turns": [{"turn_index": p.turn.turn_index, "speaker": p.turn.speaker, "text": p.turn.text,
                   "given": p.turn.given, "start_s": p.start_s, "end_s": p.end_s, "start_sample": p.start,
                   "end_sample": p.end, "pause_after_s": p.pause / SAMPLE_RATE} for p in placements],
    }


def timeline_bytes(record: dict) -> bytes:
    return json.dumps(record, indent=1, ensure_ascii=False).encode()
