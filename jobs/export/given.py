"""Given (voice-prompt) turns, for --include-given: OUT holds only rendered turns (the job never writes the given
recordings or rows), so their text, speaker, pause and recording come from the job's manifest."""

from __future__ import annotations

from collections import defaultdict

import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.manifests.audio import resolve_audio
from jobs.manifests.manifest import expand_manifest_paths

from jobs.export.options import ExportRequestError
from jobs.export.reader import Turn, given_pcm

_COLUMNS = ("conversation_id", "turn_index", "speaker", "text", "audio", "pause_ms")


def given_turns(manifests: list[str]) -> dict[str, list[Turn]]:
    """conversation_id -> its given turns, read by columns from every manifest file (only given rows are kept:
    voice prompts are few). The recordings are decoded here once, for their lengths."""
    paths, problems = expand_manifest_paths(list(manifests))
    if problems:
        raise ExportRequestError("; ".join(str(p) for p in problems))
    found: dict[str, list[Turn]] = defaultdict(list)
    for path in paths:
        table = pq.read_table(path, columns=[c for c in _COLUMNS if c in pq.read_schema(path).names])
        if "audio" not in table.column_names:
            continue
        for row in table.filter(pc.is_valid(table["audio"])).to_pylist():
            turn = Turn(row["turn_index"], row["speaker"], row["text"], 0, row.get("pause_ms"), given=True,
                        given_audio=resolve_audio(row["audio"], path))
            turn.num_samples = len(given_pcm(turn))
            found[row["conversation_id"]].append(turn)
    return dict(found)
