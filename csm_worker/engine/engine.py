"""The batched renderer: B conversation slots decoding together, each with its own cache rows and position.

- Continuous batching: a slot whose turn ends goes straight on to its conversation's next turn; a finished
  conversation frees its slot for the next waiting one. A decode step advances every active slot at once.
- Context kept across turns: a slot's cache lives across its conversation's turns, so a new turn prefills only
  what is new (the previous turn's unfed EOS frame, given turns in between, and the new text). Generated codes are
  never decoded and re-encoded to serve as context.
- Window: when a turn would not fit in the backbone's window, the oldest rendered turns are dropped (given turns,
  the voice prompts, are kept) and the kept context is prefilled again once.
- Retries (engine/retries.py): with a judge, a turn that fails it is sampled again before its conversation goes
  on. Only that row rewinds, to the position after its turn's text (the cache before it is kept, the hidden state
  there restored from a copy), while the other rows keep decoding.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import takewhile

import numpy as np
import torch

from ..backends.cpu.row_split import RowSplit
from ..model.codec import Codec
from ..model.model import CsmModel
from ..model.prompt import Span, TextEncoder, embed_spans, span_for
from ..model.sampling import SamplingParams, effective
from .prefix_cache import DEFAULT_BYTES as DEFAULT_PREFIX_BYTES
from .prefix_cache import PrefixCache, chain_key
from .requests import ConversationDone, ConversationRequest, RenderedTurn, TurnRequest
from .retries import Attempts, Judge, attempt_seed

Finalize = Callable[[list[RenderedTurn]], None]  # changes a step's finished turns in place (e.g. the watermark)
from .static_step import StaticStep, row_bucket

# When a conversation outgrows the window, drop old turns until this much room is free, so the kept context is
# prefilled again once per ~WINDOW_SLACK positions of new dialogue, not on every turn.
WINDOW_SLACK = 512
GRAPHS_ENV = "CSM_RENDER_CUDA_GRAPHS"
IDLE_WAIT_S = 0.05  # how long an engine with nothing to render waits before asking its iterable again
_END = object()


class ContextTooLong(ValueError):
    pass


def step_mode(device_type: str, static: bool | None, graphs: bool | None) -> tuple[bool, bool]:
    """(static, graphs) for an engine: what was asked, else on CUDA both (CSM_RENDER_CUDA_GRAPHS=0 keeps the
    static step but runs it eagerly: a switch for a GPU where graphs misbehave), elsewhere neither."""
    on_cuda = device_type == "cuda"
    if graphs is None:
        graphs = on_cuda and os.environ.get(GRAPHS_ENV, "1") != "0"
    if static is None:
        static = on_cuda
    return static or graphs, graphs


@dataclass
class _Conversation:
    req: ConversationRequest
    history: list[Span] = field(default_factory=list)  # everything this conversation's context holds
    next_turn: int = 0  # index into req.turns
    rendered: int = 0

    @property
    def context_len(self) -> int:
        return sum(len(s) for s in self.history)


@dataclass
class _Turn:
    req: TurnRequest
    tokens: list[int]
    start_pos: int  # the row's position after the turn's text: where its first frame goes
    frames: list[np.ndarray] = field(default_factory=list)
    attempt: int = 1
    attempts: Attempts = field(default_factory=Attempts)
    h0: torch.Tensor | None = None  # the hidden state its first frame is sampled from (kept to retry; judged runs)


class Engine:
    def __init__(self, model: CsmModel, codec: Codec, tokenizer, batch_size: int = 8, decode_audio: bool = True,
                 workers: int | None = None, static: bool | None = None, graphs: bool | None = None,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_BYTES):
        """`workers`: CPU threads a decode step is split over by rows (backends/cpu/row_split.py); default: the model's
        backend says (the cpu backend: torch's intra-op thread count; portable: none, inline).
        `static`: decode with the fixed-shape step (static_step.py); default: on CUDA. `graphs`: replay that
        step as CUDA graphs (cuda_graphs.py; implies static); default: on CUDA. Without CUDA, or when capture
        fails, the same step runs eagerly (logged). `prefix_cache_bytes`: how much backbone KV of shared leading
        given turns (a job's cast) is kept to copy into new slots instead of prefilling it again (0: none)."""
        self.model, self.codec, self.text = model, codec, TextEncoder(tokenizer)
        self.batch_size = batch_size
        self.decode_audio = decode_audio
        if workers is None:
            workers = model.backend.decode_workers()
        # Keyed by the model and batch size: the per-row costs it compares depend on both.
        self.split = RowSplit.shared(workers, (id(model), batch_size))
        self.caches = model.new_caches(batch_size)
        self.h = torch.zeros(batch_size, model.dim, device=model.device, dtype=model.dtype)
        self.pos = [0] * batch_size  # next cache position per row (Python-side, so no device syncs)
        self.convs: list[_Conversation | None] = [None] * batch_size
        self.turns: list[_Turn | None] = [None] * batch_size
        self._sampling = [(1.0, 1, 0)] * batch_size  # (temperature, top_k, seed) per row
        self.stats = {"frames": 0, "steps": 0, "prefill_positions": 0, "prefix_positions_copied": 0,
                      "rows_moved": 0, "retries": 0}
        self.judge: Judge | None = None
        self.retries = 0
        self.finalize: Finalize | None = None
        self.prefixes = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._to_prefill: dict[int, tuple[torch.Tensor, int]] = {}  # row -> (embeddings, start position)
        self.static = self._static_step(static, graphs)

    def _static_step(self, static: bool | None, graphs: bool | None) -> StaticStep | None:
        static, graphs = step_mode(self.model.device.type, static, graphs)
        if not static:
            return None
        runner = None
        if graphs:
            from .cuda_graphs import GraphRunner

            runner = GraphRunner(self.model.device)
        return StaticStep(self.model, self.caches, self.h, runner)

    # -- driver loop ------------------------------------------------------------------------------------------
    def run(self, conversations: Iterable[ConversationRequest], judge: Judge | None = None,
            retries: int = 0, finalize: "Finalize | None" = None) -> Iterator[RenderedTurn | ConversationDone]:
        """Render every conversation; yields each RenderedTurn as it finishes and a ConversationDone per
        conversation. Conversations are pulled from the iterable only when a slot is free; the iterable may
        yield None for "none ready yet" (a work queue fed from elsewhere), and the engine asks again later.
        `judge`: every rendered attempt is judged (its audio decoded even without decode_audio); one that fails
        is rendered again up to `retries` more times (not greedy turns: they would come out the same), and the
        turn handed back is the attempt engine/retries.py keeps, with its verdict in `quality`. `finalize`: called
        once per step with the turns about to be handed back (audio decoded), after the judge chose them, to
        change them in place as one batch (the watermark: only the attempt kept is marked, and after the judge,
        which hears the model's own audio)."""
        self.judge, self.retries = judge, max(0, int(retries)) if judge else 0
        self.finalize = finalize
        self._reset()  # a caller that stopped iterating a previous run may have left rows occupied
        pending = iter(conversations)
        exhausted = False
        while True:
            waiting = False  # the iterable said "none ready yet": ask again after the next step
            for row in range(self.batch_size):
                while not (exhausted or waiting) and self.convs[row] is None:
                    conv = next(pending, _END)
                    exhausted, waiting = conv is _END, conv is None
                    if conv is not _END and conv is not None:
                        yield from self._admit(row, conv)
            if not any(t is not None for t in self.turns):
                if exhausted:
                    return
                time.sleep(IDLE_WAIT_S)  # nothing to render until the iterable has a conversation ready
                continue
            yield from self._step()

    def _reset(self) -> None:
        self._to_prefill = {}
        self.convs = [None] * self.batch_size
        self.turns = [None] * self.batch_size
        self.pos = [0] * self.batch_size
        for row in range(self.batch_size if self.static else 0):
            self.static.free(row)

    def _admit(self, row: int, req: ConversationRequest) -> Iterator[ConversationDone | RenderedTurn]:
        conv = _Conversation(req)
        self.convs[row], self.pos[row] = conv, 0
        yield from self._advance(row)

    def _advance(self, row: int) -> Iterator[ConversationDone]:
        """Move the row's conversation to its next turn to render, or release the row when none is left."""
        conv = self.convs[row]
        try:
            while conv.next_turn < len(conv.req.turns) and conv.req.turns[conv.next_turn].is_given:
                conv.history.append(self._given_span(conv.req.turns[conv.next_turn]))
                conv.next_turn += 1
            if conv.next_turn < len(conv.req.turns):
                self._start_turn(row, conv.req.turns[conv.next_turn])
                return
            done = ConversationDone(conv.req.conversation_id, tag=conv.req.tag, turns_rendered=conv.rendered)
        except Exception as e:  # one conversation's bad input must not stop the others
            done = ConversationDone(conv.req.conversation_id, error=str(e), error_type=type(e).__name__,
                                    tag=conv.req.tag, turns_rendered=conv.rendered)
        self.convs[row] = self.turns[row] = None
        self.pos[row] = 0
        if self.static:
            self.static.free(row)
        yield done

    def _given_span(self, turn: TurnRequest) -> Span:
        codes = turn.codes if turn.codes is not None else self.codec.encode(turn.audio)
        return span_for(self.text.encode(turn.speaker, turn.text), codes, given=turn.audio is not None,
                        device=self.model.device)

    # -- turns ------------------------------------------------------------------------------------------------
    def _start_turn(self, row: int, req: TurnRequest) -> None:
        conv = self.convs[row]
        tokens = self.text.encode(req.speaker, req.text)
        new = Span(torch.tensor(tokens, dtype=torch.long, device=self.model.device),
                   torch.zeros(0, 32, dtype=torch.long, device=self.model.device), given=False)
        if conv.context_len + len(new) + req.max_frames > self.model.window:
            self._drop_oldest(conv, len(new) + req.max_frames)
            self.pos[row] = 0  # the kept context is prefilled again from position 0
        if self.pos[row] == 0 and self.prefixes is not None:
            self.pos[row] = self._load_prefix(row, conv)
        unfed = conv.context_len - self.pos[row]
        embeds = torch.cat([embed_spans(self.model, conv.history, unfed), self.model.embed_text(new.tokens)]) \
            if unfed else self.model.embed_text(new.tokens)
        self._to_prefill[row] = (embeds, self.pos[row])  # run with other rows' prefills before the next step
        self.pos[row] += embeds.shape[0]
        self.stats["prefill_positions"] += embeds.shape[0]
        conv.history.append(new)
        self.turns[row] = _Turn(req, tokens, start_pos=self.pos[row])
        self._begin_attempt(row)

    def _begin_attempt(self, row: int) -> None:
        """Sample the row's turn from its start (its text already in the cache) with its attempt's seed."""
        turn = self.turns[row]
        self._sampling[row] = (turn.req.temperature, turn.req.top_k, attempt_seed(turn.req.seed, turn.attempt))
        if self.static:
            self.static.start_turn(row, turn.start_pos, *self._sampling[row])

    def _load_prefix(self, row: int, conv: _Conversation) -> int:
        """Put the KV of the conversation's leading given turns (voice prompts) in the row's cache, span by span:
        copied when another conversation began with the same spans up to it, else prefilled on its own on top
        of the spans before it, and kept. Returns their length."""
        k_cache, v_cache = self.caches["backbone"]
        start, key = 0, ""
        for span in takewhile(lambda s: s.given, conv.history):
            key, end = chain_key(key, span), start + len(span)
            found = self.prefixes.get(key)
            if found is not None:
                k_cache[:, row, :, start:end], v_cache[:, row, :, start:end] = found
                self.stats["prefix_positions_copied"] += len(span)
            else:
                self.model.prefill(self.caches, row, [embed_spans(self.model, [span])], [start])
                self.prefixes.put(key, k_cache[:, row, :, start:end], v_cache[:, row, :, start:end])
                self.stats["prefill_positions"] += len(span)
            start = end
        return start

    def _drop_oldest(self, conv: _Conversation, room: int) -> None:
        """Drop the oldest rendered turns until `room` positions and WINDOW_SLACK more are free (or nothing but
        given turns is left); fail only when the turn does not fit even then."""
        target = self.model.window - WINDOW_SLACK
        while conv.context_len + room > target:
            oldest = next((i for i, s in enumerate(conv.history) if not s.given), None)
            if oldest is None:
                break
            del conv.history[oldest]
        if conv.context_len + room > self.model.window:
            raise ContextTooLong(
                f"turn {conv.req.turns[conv.next_turn].turn_index}: the given turns and this turn need "
                f"{conv.context_len + room} positions, more than the model's window of {self.model.window}"
            )

    def _attempt(self, row: int, reason: str) -> RenderedTurn:
        """The row's turn as this attempt rendered it."""
        conv, turn = self.convs[row], self.turns[row]
        frames = np.stack(turn.frames, axis=1) if turn.frames else np.zeros((32, 0), dtype=np.int64)
        return RenderedTurn(conv.req.conversation_id, turn.req.turn_index, turn.req.speaker, turn.req.text,
                            codes=frames, seed=turn.req.seed, end_reason=reason, tag=conv.req.tag,
                            attempt=turn.attempt)

    def _retry(self, row: int) -> None:
        """Rewind the row to its turn's start for the next attempt: the cache up to there is the same context
        (what the failed attempt wrote past it is rewritten before anything reads it), h its copy from then."""
        turn = self.turns[row]
        turn.attempt += 1
        turn.frames = []
        self.pos[row] = turn.start_pos
        self.h[row] = turn.h0
        self._begin_attempt(row)
        self.stats["retries"] += 1

    def _finish_turn(self, row: int, kept: RenderedTurn) -> RenderedTurn:
        conv, turn = self.convs[row], self.turns[row]
        # The turn's span (its text is already in history) gains its frames and the EOS frame, as context.
        conv.history[-1] = span_for(turn.tokens, kept.codes, given=False, device=self.model.device)
        if kept.attempt != turn.attempt:
            # The cache holds the last attempt's frames: the kept one's are prefilled with the next turn instead.
            self.pos[row] = turn.start_pos
        conv.next_turn += 1
        conv.rendered += 1
        self.turns[row] = None
        kept.attempts = turn.attempts.count
        return kept

    # -- one decode step for every active row -----------------------------------------------------------------
    def _flush_prefills(self) -> None:
        """Prefill every row whose turn just started, consecutive rows in one batched call (at the start of a job
        every slot starts at once; later, turns ending in the same step share a call)."""
        rows = sorted(self._to_prefill)
        size = lambda r: self._to_prefill[r][0].shape[0]
        while rows:
            run = [rows.pop(0)]
            # Grow the run while padding to its longest prompt wastes at most half the work (a window rebuild
            # of ~1500 positions is not padded onto a row that prefills 30).
            while rows and rows[0] == run[-1] + 1 and \
                    (len(run) + 1) * max(size(r) for r in run + rows[:1]) <= 2 * sum(size(r) for r in run + rows[:1]):
                run.append(rows.pop(0))
            embeds, starts = zip(*(self._to_prefill[r] for r in run))
            self.h[run[0] : run[-1] + 1] = self.model.prefill(self.caches, run[0], list(embeds), list(starts))
            if self.retries:
                for r in run:
                    self.turns[r].h0 = self.h[r].clone()
        self._to_prefill = {}

    def _step(self) -> Iterator[RenderedTurn | ConversationDone]:
        self._flush_prefills()
        self._compact()
        active = self._active_rows()
        hi = 1 + active[-1]
        codes_np = self._static_codes(active) if self.static else torch.cat(self.split.run(self._decode_rows, hi))
        # The step's one host sync: EOS and frames are decided here. A copy: the static step's codes are a buffer
        # the next step overwrites, and on CPU .cpu() would hand the buffer itself to the turn's frames.
        codes_np = codes_np[:hi].to("cpu", copy=True).numpy()
        eos = (codes_np == self.model.eos_code).all(axis=1)  # one numpy call, not one per row (512 on a GPU)
        self.stats["steps"] += 1
        ended = []  # (row, end reason) of the turns whose attempt ended in this step
        for r in range(hi):
            turn = self.turns[r]
            if turn is None:
                continue
            self.pos[r] += 1
            if eos[r]:
                reason = "eos"
            else:
                turn.frames.append(codes_np[r])
                self.stats["frames"] += 1
                if len(turn.frames) < turn.req.max_frames:
                    continue
                reason = "max_length"
            ended.append((r, reason))
        finished = self._settle(ended)
        if self.finalize and finished:
            self.finalize([turn for _, turn in finished])
        yield from (turn for _, turn in finished)
        for r, _ in finished:
            yield from self._advance(r)

    def _settle(self, ended: list[tuple[int, str]]) -> list[tuple[int, RenderedTurn]]:
        """Judge the attempts that just ended; rewind the rows whose attempt failed and may try again, finish
        the others with the attempt they keep. Returns (row, turn) of the finished ones."""
        attempts = [self._attempt(r, reason) for r, reason in ended]
        self._attach_audio(attempts)
        verdicts = self.judge(attempts) if self.judge and attempts else [None] * len(attempts)
        finished = []
        for (r, _), attempt, verdict in zip(ended, attempts, verdicts):
            turn = self.turns[r]
            turn.attempts.add(attempt, verdict)
            if verdict is not None and not verdict.passed and turn.attempts.count <= self.retries \
                    and effective(turn.req.temperature, turn.req.top_k)[1] > 1:
                self._retry(r)
            else:
                finished.append((r, self._finish_turn(r, turn.attempts.best)))
        return finished

    def _active_rows(self) -> list[int]:
        return [r for r in range(self.batch_size) if self.turns[r] is not None]

    def _static_codes(self, active: list[int]) -> torch.Tensor:
        """The fixed-shape step over the slots below the highest active row's bucket; its buckets come from
        Python-side state, so no sync."""
        t_len = 1 + max(self.pos[r] for r in active)
        max_top_k = max(effective(*self._sampling[r][:2])[1] for r in active)
        return self.static.run(t_len, max_top_k, active[-1] + 1)

    def _compact(self) -> None:
        """Move conversations from the highest rows into free lower ones when that lets a step run fewer rows
        (a smaller row_bucket): a step computes every row up to the highest active one, so at a job's tail,
        with the last conversations scattered over B slots, it would pay for all B. A conversation's codes do
        not depend on its row (its noise is keyed by its seed and frame, its cache rows are copied whole)."""
        active = self._active_rows()
        target = row_bucket(len(active), self.batch_size)
        if row_bucket(active[-1] + 1, self.batch_size) <= target:
            return
        free = iter([r for r in range(target) if self.convs[r] is None])
        for src in [r for r in active if r >= target]:
            self._move_row(src, next(free))

    def _move_row(self, src: int, dst: int) -> None:
        """Row src's conversation, mid-turn, into the free row dst. Only the backbone's cache holds context
        (positions before pos); the depth decoder's is rewritten every frame."""
        p = self.pos[src]
        for cache in self.caches["backbone"]:
            cache[:, dst, :, :p] = cache[:, src, :, :p]
        self.h[dst] = self.h[src]
        self.pos[dst], self.convs[dst], self.turns[dst] = p, self.convs[src], self.turns[src]
        self._sampling[dst] = self._sampling[src]
        self.pos[src], self.convs[src], self.turns[src] = 0, None, None
        if self.static:
            self.static.move(src, dst)
        self.stats["rows_moved"] += 1

    def _decode_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Sample one frame for rows lo..hi-1 and feed it back into their caches: codes [hi - lo, 32]. Blocks of
        rows may run on different threads at once: they touch only their own cache rows and slice of self.h."""
        m, rows = self.model, slice(lo, hi)
        params = SamplingParams.build(*zip(*self._sampling[lo:hi]), device=m.device)
        frame_index = torch.tensor([len(t.frames) if t else 0 for t in self.turns[lo:hi]], device=m.device)
        codes = m.sample_frame(self.caches, rows, self.h[lo:hi], params, frame_index)
        # Every row feeds the frame it just sampled: for a row whose turn ended on EOS that frame *is* the EOS
        # frame its context needs; for one that hit max length it is its last frame (the EOS frame follows).
        pos = torch.tensor(self.pos[lo:hi], device=m.device)
        self.h[lo:hi] = m.decode(self.caches, rows, codes, pos, max(self.pos[lo:hi]) + 1)
        return codes

    def _attach_audio(self, finished: list[RenderedTurn]) -> None:
        if not (self.decode_audio or self.judge or self.finalize) or not finished:
            return
        for turn, audio in zip(finished, self.codec.decode_many([t.codes for t in finished])):
            turn.audio = audio
