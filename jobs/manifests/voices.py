"""`--voices`: a cast defined once per job. Each speaker of the cast has one or more prompt utterances (a recording
and its transcript); every conversation that uses the speaker starts with them as given context, so the speaker
keeps one voice across every conversation (CSM's base model has no fixed voices).

The file is validated like a manifest (file, row and column in every problem). Its content (rows and the bytes of
every recording) is hashed into the job fingerprint, and each voice has its own hash, recorded in the metadata of
every turn conditioned on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.manifests.audio import AudioProbe, resolve_audio, scheme_problem
from jobs.manifests.manifest import ManifestError, Problem, expand_manifest_paths
from jobs.manifests.remote import local_manifests

FRAME_MS = 80
REQUIRED = {"speaker": pa.types.is_integer, "text": pa.types.is_string, "audio": pa.types.is_string}
OPTIONAL = {"name": pa.types.is_string, "order": pa.types.is_integer}


@dataclass(frozen=True)
class Prompt:
    text: str
    audio: str  # a local path or an s3:// URI
    duration_ms: float | None  # None for s3:// recordings (not fetched while validating)


@dataclass
class Voice:
    speaker: int
    name: str | None
    prompts: list[Prompt]
    hash: str = ""

    def positions(self, text_positions) -> int | None:
        """Backbone positions this voice's prompts take: text tokens, frames and one EOS frame each."""
        if any(p.duration_ms is None for p in self.prompts):
            return None
        return sum(text_positions(self.speaker, p.text) + int(-(-p.duration_ms // FRAME_MS)) + 1
                   for p in self.prompts)


@dataclass
class Cast:
    voices: dict[int, Voice] = field(default_factory=dict)
    hash: str = ""
    source: str = ""

    def describe(self) -> list[str]:
        return [f"speaker {v.speaker}: {v.name or '(no name)'}, {len(v.prompts)} prompt(s), voice {v.hash}"
                for v in sorted(self.voices.values(), key=lambda v: v.speaker)]

    def speakers_for(self, turns) -> list[int]:
        """The cast speakers a conversation gets prompts for: those its turns use, except speakers it already
        gives its own recordings for (those win), in speaker order."""
        own = {t.speaker for t in turns if t.is_given}
        return sorted({t.speaker for t in turns} & self.voices.keys() - own)


def read_cast(arg: str, s3_endpoint_url: str | None = None) -> Cast:
    """The cast in `arg` (a Parquet file, folder or glob, local or s3://). Raises ManifestError listing every
    problem."""
    with local_manifests([arg], s3_endpoint_url) as local:
        files, problems = expand_manifest_paths(local.args)
        rows: list[tuple[str, int, dict]] = []
        for path in files:
            rows += _read_rows(path, problems)
        # A recording beside an s3:// cast is named by its s3:// URI (the local copy goes away with the block).
        cast = _build(rows, problems, check_audio=not local.has_remote, name=local.name)
        if problems:
            raise ManifestError(local.problems(problems))
        cast.source = arg
        cast.hash = _cast_hash(cast, s3_endpoint_url)
        return cast


def _read_rows(path: str, problems: list[Problem]) -> list[tuple[str, int, dict]]:
    try:
        table = pq.read_table(path)
    except Exception as e:  # not Parquet, unreadable
        problems.append(Problem(path, None, None, None, f"cannot read as Parquet ({e})"))
        return []
    bad = False
    for name, ok in {**REQUIRED, **OPTIONAL}.items():
        if name not in table.column_names:
            if name in REQUIRED:
                problems.append(Problem(path, None, None, name, f"missing required column {name}: add it"))
                bad = True
        elif not ok(table.schema.field(name).type) and not pa.types.is_null(table.schema.field(name).type):
            problems.append(Problem(path, None, None, name,
                                    f"column {name} has type {table.schema.field(name).type}: use "
                                    f"{'an integer' if name in ('speaker', 'order') else 'a string'} type"))
            bad = True
    if bad:
        return []
    return [(path, i, row) for i, row in enumerate(table.select(
        [c for c in (*REQUIRED, *OPTIONAL) if c in table.column_names]).to_pylist())]


def _build(rows, problems: list[Problem], check_audio: bool, name=lambda path: path) -> Cast:
    probe, cast, seen = AudioProbe(), Cast(), {}
    for path, i, row in rows:
        bad = lambda column, message: problems.append(Problem(path, None, None, column, message, row=i))
        speaker, text, audio = row.get("speaker"), row.get("text"), row.get("audio")
        if speaker is None or speaker < 0:
            bad("speaker", f"speaker {speaker} is not a speaker id: use an integer >= 0")
            continue
        if not text or not text.strip():
            bad("text", "text is empty: give the transcript of the recording")
            continue
        if not audio:
            bad("audio", "audio is empty: give the path or s3:// URI of the speaker's recording")
            continue
        resolved = name(resolve_audio(audio, path))
        issue, duration = (scheme_problem(resolved), None)
        if issue is None and check_audio:
            issue, duration = probe.check(resolved)
        if issue:
            bad("audio", issue)
            continue
        order = row.get("order") or 0
        if (speaker, order) in seen:
            bad("order", f"speaker {speaker} has two prompts of order {order} (the other at {seen[speaker, order]}): "
                         "give each prompt of a speaker its own order")
            continue
        seen[speaker, order] = f"{path} row {i}"
        voice = cast.voices.setdefault(speaker, Voice(speaker, row.get("name"), []))
        if row.get("name") and voice.name and row["name"] != voice.name:
            bad("name", f"speaker {speaker} is named both {voice.name!r} and {row['name']!r}: use one name")
            continue
        voice.name = voice.name or row.get("name")
        voice.prompts.append((order, Prompt(text, resolved, duration)))
    for voice in cast.voices.values():
        voice.prompts = [p for _, p in sorted(voice.prompts, key=lambda op: op[0])]
    return cast


def _cast_hash(cast: Cast, s3_endpoint_url: str | None = None) -> str:
    """Each voice's hash covers its name, transcripts and recordings' bytes; the cast's covers every voice."""
    whole = hashlib.sha256()
    for speaker in sorted(cast.voices):
        voice = cast.voices[speaker]
        h = hashlib.sha256(f"{speaker}\0{voice.name or ''}".encode())
        for p in voice.prompts:
            h.update(b"\0" + p.text.encode() + b"\0" + hashlib.sha256(_read_audio_bytes(p.audio, s3_endpoint_url)).digest())
        voice.hash = h.hexdigest()[:16]
        whole.update(voice.hash.encode())
    return whole.hexdigest()[:16]


def _read_audio_bytes(location: str, s3_endpoint_url: str | None) -> bytes:
    if location.startswith("s3://"):
        from jobs.storage.s3 import read_uri_bytes

        return read_uri_bytes(location, s3_endpoint_url)
    with open(location, "rb") as f:
        return f.read()


def check_window(cast: Cast, pairs: pa.Table, text_positions, window: int, turn_room: int,
                 rooms: pa.Table | None = None) -> list[Problem]:
    """The cast must fit each conversation's window beside what the engine always keeps: the conversation's own
    given turns and the turn it renders. `pairs` holds the distinct (conversation_id, speaker) pairs of the
    manifests; only the cast speakers a conversation uses count. `rooms` (rooms.py, from validation) gives each
    conversation's given positions and its longest turn; without it, or for a conversation it lacks, a turn is
    taken to need `turn_room` and given turns nothing."""
    need = {s: v.positions(text_positions) for s, v in cast.voices.items()}
    need = {s: n for s, n in need.items() if n is not None}
    if not need or pairs.num_rows == 0:
        return []
    used = pairs.filter(pc.is_in(pairs["speaker"], pa.array(list(need), pa.int64())))
    if used.num_rows == 0:
        return []
    used = used.append_column("positions", pa.array([need[s] for s in used["speaker"].to_pylist()], pa.int64()))
    totals = used.group_by("conversation_id").aggregate([("positions", "sum")])
    if rooms is not None:
        totals = totals.join(rooms, keys="conversation_id", join_type="left outer")
    given = pc.fill_null(totals["given"], 0) if rooms is not None else pa.repeat(0, totals.num_rows)
    longest = pc.fill_null(totals["longest"], turn_room) if rooms is not None else pa.repeat(turn_room, totals.num_rows)
    whole = pc.add(pc.add(totals["positions_sum"], given), longest)
    worst = pc.index(whole, pc.max(whole)).as_py()
    if whole[worst].as_py() <= window:
        return []
    cid, total = totals["conversation_id"][worst].as_py(), totals["positions_sum"][worst].as_py()
    speakers = sorted(used.filter(pc.equal(used["conversation_id"], cid))["speaker"].to_pylist())
    detail = ", ".join(f"speaker {s} ({cast.voices[s].name or 'no name'}) {need[s]}" for s in speakers)
    own = f", its given turns {given[worst].as_py()}" if given[worst].as_py() else ""
    return [Problem(cast.source, None, None, "audio",
                    f"the cast's prompts for conversation {cid} need {total} positions ({detail}){own} and its "
                    f"longest turn up to {longest[worst].as_py()}: {whole[worst].as_py()}, more than the model's "
                    f"window of {window}: shorten the prompts, give fewer prompts per speaker, or give that "
                    "conversation's turns a lower max_audio_length_ms")]


def speaker_pairs(files: list[str]) -> pa.Table:
    """Distinct (conversation_id, speaker) pairs of the turns to render, without the speakers a conversation gives
    its own recordings for (they get no cast prompt). Three columns are read, a file at a time."""
    rendered, given = [], []
    for path in files:
        table = pq.read_table(path, columns=[c for c in ("conversation_id", "speaker", "audio")
                                              if c in pq.read_schema(path).names])
        pairs = table.select(["conversation_id", "speaker"]).cast(
            pa.schema([("conversation_id", pa.string()), ("speaker", pa.int64())]))
        is_given = pc.is_valid(table["audio"]) if "audio" in table.column_names else pa.repeat(False, len(table))
        rendered.append(_distinct(pairs.filter(pc.invert(is_given))))
        given.append(_distinct(pairs.filter(is_given)))
    if not rendered:
        return pa.table({"conversation_id": pa.array([], pa.string()), "speaker": pa.array([], pa.int64())})
    both = _distinct(pa.concat_tables(rendered)), _distinct(pa.concat_tables(given))
    return both[0].join(both[1], keys=["conversation_id", "speaker"], join_type="left anti")


def _distinct(pairs: pa.Table) -> pa.Table:
    return pairs.group_by(["conversation_id", "speaker"]).aggregate([])
