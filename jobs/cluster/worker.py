"""The render worker: one loaded model and engine; renders whole conversations and writes their outputs.

Plain Python (the runner wraps it in a Ray actor), so it can be tested and used without Ray. It yields small
progress events; the audio itself goes straight to storage from here, never through the driver.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Protocol

from csm_worker import ConversationRequest, RenderedTurn, TurnRequest, load_csm_1b
from csm_worker.audio import load_audio

from jobs.manifests.voices import Cast
from jobs.storage.jobrecord import read_job_record
from jobs.model_source import local_model
from jobs.storage.outputs import OutputWriter
from jobs.plan.order import Defaults, WorkItem, settings_for
from jobs.plan.passes import RenderPass, pass_seed
from jobs.qc_judge import make_judge
from jobs.qc_options import QcOptions
from jobs.watermark_options import WatermarkOptions, make_finalizer
from jobs.storage import ObjectExists, open_storage
from jobs.storage.write_queue import WriteQueue


CPU_AUTO_BATCH = 32  # on CPU, throughput flattens out around here (docs/BENCHMARKS.md)
ASK_AGAIN_S = 0.2  # while the feed is empty, ask it at most this often (each ask is a round trip to the queue)
WEIGHTS_WAIT_S = 30.0  # how long a worker waits for the driver to record the job's weights hash


def default_batch_size(generator) -> int:
    """GPU: as many slots as free memory holds; CPU: a fixed size past which batching stops paying."""
    if str(generator.device).startswith("cuda"):
        return generator.max_batch_size()
    return CPU_AUTO_BATCH


class RenderWorker:
    def __init__(self, model: str, out: str, device: str = "auto", dtype: str | None = None,
                 batch_size: int | str = 8,
                 audio_format: str = "wav", defaults: Defaults = Defaults(), s3_endpoint_url: str | None = None,
                 cast: Cast | None = None, backend: str | None = None, qc: QcOptions = QcOptions(),
                 watermark: WatermarkOptions = WatermarkOptions(), rerender: RenderPass | None = None):
        self.generator = load_csm_1b(device, local_model(model, s3_endpoint_url), dtype, backend=backend)
        self.cast = cast
        self._prompt_audio: dict[str, object] = {}  # the cast's recordings, read once per worker
        if batch_size == "auto":
            batch_size = default_batch_size(self.generator)
        self.writer = OutputWriter(open_storage(out, s3_endpoint_url), audio_format, model, watermark.record(model),
                                   rerender)
        self.s3_endpoint_url = s3_endpoint_url
        self.defaults = defaults
        self.batch_size = batch_size
        self.qc = qc
        # Loaded once, beside the model and on its device (with --qc-asr, a speech recognizer too).
        self.judge = make_judge(qc, str(self.generator.device), s3_endpoint_url)
        # Every committed turn is marked (after the judge, which hears the model's own audio), on the same device.
        self.finalize, self.marker = make_finalizer(watermark, model, str(self.generator.device), s3_endpoint_url)

    def info(self) -> dict:
        budget = getattr(self.generator, "slot_budget", None)  # set when --batch-size auto sized it from memory
        return {"device": str(self.generator.device), "dtype": str(self.generator.model.dtype).replace("torch.", ""),
                "batch_size": self.batch_size, "weights_hash": self.generator.loaded.weights_hash,
                "backend": self.generator.model.backend.name, "batch_size_why": budget.describe() if budget else None,
                "watermark": {"weights": self.marker.source, "sha256": self.marker.weights_id} if self.marker else None}

    def render(self, feed: "Feed") -> Iterator[dict]:
        """Render conversations taken from `feed` until it has no more. Yields {"event": "ready", ...} once the
        model is loaded, {"event": "turn", ...} per committed turn and {"event": "done", ...} per conversation
        (with "error" when it failed), after its writes finished; then tells the feed the conversation is done."""
        yield {"event": "ready", **self.info()}
        if not self._weights_match():
            return  # the driver refuses the job on this worker's hash (jobrecord.check_weights); render nothing
        state: dict[str, _Progress] = {}  # conversations taken and not yet finished
        writes = WriteQueue(max_pending=max(16, 2 * self.batch_size))
        try:
            requests = self._requests(feed, state)
            # Every turn is checked, and a failed one rendered again, before the next turn hears it; a turn is
            # committed once, as the attempt the engine kept (csm_worker/engine/retries.py).
            for event in self.generator.render(requests, batch_size=self.batch_size, judge=self.judge,
                                               retries=self.qc.retries, finalize=self.finalize):
                cid = event.conversation_id
                if isinstance(event, RenderedTurn):
                    writes.submit(cid, partial(self._commit, state[cid], event, feed))
                else:
                    yield from _turn_events(writes.drain(cid))
                    early = event.tag if isinstance(event.tag, Exception) else None  # failed in _requests
                    error_type, error = ((type(early).__name__, str(early)) if early
                                         else (event.error_type, event.error))
                    yield self._finish(state.pop(cid), error_type, error, feed)
                yield from _turn_events(writes.results())
            yield from _turn_events(writes.drain())
        finally:
            writes.close()

    def _weights_match(self) -> bool:
        """Whether this worker's weights are the job's, checked before it takes any work: the driver's own check
        comes only when it reads the "ready" event, and turns rendered with other weights must never be
        committed. The job's hash is the first worker's, recorded by the driver on its "ready" event, so wait a
        little for it; without a job record (no driver, e.g. the Python API) there is nothing to match."""
        deadline = time.monotonic() + WEIGHTS_WAIT_S
        while (record := read_job_record(self.writer.storage)) is not None:
            known = record.get("weights_hash")
            if known is not None:
                return known == self.generator.loaded.weights_hash
            if time.monotonic() > deadline:
                break  # the driver has not recorded one yet: its check on this worker's "ready" still holds
            time.sleep(ASK_AGAIN_S)
        return True

    # -- requests ---------------------------------------------------------------------------------------------
    def _requests(self, feed: "Feed", state: dict) -> Iterator[ConversationRequest | None]:
        """What the engine renders: conversations taken from the feed one at a time (the engine asks only when
        a slot is free), None while the feed has nothing ready (the engine goes on and asks again later)."""
        asked_empty = -ASK_AGAIN_S
        while True:
            if time.monotonic() - asked_empty < ASK_AGAIN_S:
                yield None  # do not ask the feed on every decode step while it is empty
                continue
            got = feed.take()
            if got is None:
                return
            if got is False:
                asked_empty = time.monotonic()
                yield None
                continue
            item, attempt = got
            if attempt > 1:  # a retry: a worker that died may have committed more turns since the plan was made
                item = WorkItem(item.spec, self.writer.committed(item.conversation_id))
            voiced = self.cast.speakers_for(item.spec.turns) if self.cast is not None else ()
            progress = state[item.conversation_id] = _Progress(item, attempt, voiced)
            try:
                request = self._request(item, progress)
            except Exception as e:  # unreadable voice prompt, missing codes: this conversation fails alone
                # Sent on as a conversation of no turns carrying its error: the engine hands it back at once as
                # ConversationDone, even when it has no other rows (an idle engine yields nothing else, and a
                # worker running a last attempt alone takes no more work until this one is finished), and it is
                # then finished like any other, the feed and the driver told together.
                request = ConversationRequest(item.conversation_id, [], tag=e)
            yield request

    def _request(self, item: WorkItem, progress: "_Progress") -> ConversationRequest:
        turns = self._cast_prompts(item.spec.turns)
        # Each committed turn's current record (its latest pass): one listing, only for a resumed conversation.
        progress.passes = self.writer.latest_passes(item.conversation_id) if item.committed else {}
        rerender = self.writer.rerender
        for t in item.spec.turns:
            s = settings_for(t, self.defaults)
            render_pass = rerender.pass_of(t.conversation_id, t.turn_index) if rerender else 1
            common = dict(turn_index=t.turn_index, speaker=t.speaker, text=t.text, temperature=s["temperature"],
                          top_k=s["top_k"], max_audio_length_ms=s["max_audio_length_ms"],
                          seed=pass_seed(s["seed"], render_pass))
            if t.is_given:
                turns.append(TurnRequest(**common, audio=self._voice(t.audio)))
            elif t.turn_index in item.committed:
                # Resumed: the earlier render's codes are its context, exactly as if it had just been rendered.
                codes = self.writer.load_codes(t.conversation_id, t.turn_index, progress.passes.get(t.turn_index, 1))
                turns.append(TurnRequest(**common, codes=codes))
            else:
                turns.append(TurnRequest(**common))
        return ConversationRequest(item.conversation_id, turns)

    def _cast_prompts(self, turns) -> list[TurnRequest]:
        """The cast's prompt turns this conversation starts with, as given context. Negative turn indices: they
        are no turns of the manifest (nothing is rendered or written for them)."""
        if self.cast is None:
            return []
        prompts = [(speaker, p) for speaker in self.cast.speakers_for(turns)
                   for p in self.cast.voices[speaker].prompts]
        return [TurnRequest(i - len(prompts), speaker, p.text, audio=self._prompt(p.audio))
                for i, (speaker, p) in enumerate(prompts)]

    def _prompt(self, location: str):
        if location not in self._prompt_audio:
            self._prompt_audio[location] = self._voice(location)
        return self._prompt_audio[location]

    def _voice_of(self, progress: "_Progress", speaker: int) -> tuple[str | None, str | None]:
        """(name, hash) of the cast voice a turn of this speaker was conditioned on, or (None, None)."""
        if speaker not in progress.voiced:
            return None, None
        voice = self.cast.voices[speaker]
        return voice.name, voice.hash

    def _voice(self, location: str):
        """A given turn's recording, from a local path or an s3:// URI."""
        if location.startswith("s3://"):
            from jobs.storage.s3 import read_uri_bytes

            return load_audio(read_uri_bytes(location, self.s3_endpoint_url), name=location)
        return load_audio(location)

    # -- outputs ----------------------------------------------------------------------------------------------
    def _commit(self, progress: "_Progress", turn: RenderedTurn, feed: "Feed") -> dict | None:
        if progress.error:  # an earlier turn of this conversation could not be written: nothing after it counts
            return None
        if not feed.holds(turn.conversation_id):
            # Given up for dead (a node cut off from the cluster, still running): another worker renders the
            # conversation now, so this one writes none of its files (a fence, checked before every turn).
            progress.superseded = True
            progress.error = ("LeaseLost", f"turn {turn.turn_index}: the conversation is no longer this worker's "
                                           "(it was given up for dead); left to the worker that has it now")
            return None
        spec = progress.item.spec.turns[turn.turn_index]
        s = settings_for(spec, self.defaults)
        try:
            row = self.writer.commit_turn(turn, s["temperature"], s["top_k"], spec.pause_ms,
                                          voice=self._voice_of(progress, turn.speaker))
        except ObjectExists as e:  # someone else committed this turn: the conversation is theirs now
            progress.superseded = True
            progress.error = (type(e).__name__, f"turn {turn.turn_index}: {e}")
            return None
        except Exception as e:
            progress.error = (type(e).__name__, f"turn {turn.turn_index}: cannot write outputs: {e}")
            return None
        progress.rows.append(row)
        return {"event": "turn", "conversation_id": turn.conversation_id, "turn_index": turn.turn_index,
                "duration_s": row["duration_s"], "num_frames": row["num_frames"]}

    def _finish(self, progress: "_Progress", error_type: str | None, error: str | None, feed: "Feed") -> dict:
        if progress.error and not error:
            error_type, error = progress.error
        item = progress.item
        cid = item.conversation_id
        if progress.superseded:
            # Another worker or run committed its turns: its records and metadata are that one's to write, and a
            # failure record or partial metadata from here could land after its whole file.
            feed.finish(cid)
            return {"event": "done", "conversation_id": cid, "error": error, "error_type": error_type,
                    "turns_committed": len(item.committed) + len(progress.rows)}
        rows = [self.writer.read_commit(cid, i, progress.passes.get(i, 1)) for i in sorted(item.committed)]
        rows += progress.rows
        # A failure record before a partial metadata file, a whole metadata file before its failure record is
        # cleared: then a complete conversation without a failure record has all its rows (runner.repair_metadata
        # relies on it, whatever crashed when).
        if error:
            self.writer.write_failure(cid, error_type or "Error", error, attempts=progress.attempt,
                                      turns_committed=len(rows))
        if rows:
            self.writer.write_metadata(cid, rows)
        if not error:
            self.writer.clear_failure(cid)
        feed.finish(cid)
        return {"event": "done", "conversation_id": cid, "error": error, "error_type": error_type,
                "turns_committed": len(rows)}


def _turn_events(results: list) -> Iterator[dict]:
    # A generator, not a list: Ray drives `render` with send(), which `yield from` forwards to the sub-iterator.
    for r in results:
        if r:  # None: a turn whose write failed (its conversation records the error)
            yield r


class Feed(Protocol):
    """Where a worker takes its conversations from (jobs.cluster.ray_pool.RayFeed: the job's queue actor)."""

    def take(self) -> tuple[WorkItem, int] | None | bool:
        """(item, attempt); False: none ready yet; None: no more work."""

    def holds(self, conversation_id: str) -> bool:
        """Whether the conversation is still this worker's (checked before each turn's files are written)."""

    def finish(self, conversation_id: str) -> None:
        """Everything of the conversation is written."""


class _Progress:
    def __init__(self, item: WorkItem, attempt: int = 1, voiced=()):
        self.item = item
        self.attempt = attempt
        self.voiced = frozenset(voiced)  # speakers conditioned on a cast voice (found once, read per turn)
        self.rows: list[dict] = []
        self.error: tuple[str, str] | None = None
        self.superseded = False  # another worker or run committed one of its turns
        self.passes: dict[int, int] = {}  # committed turn -> its current record's pass (OutputWriter.latest_passes)
