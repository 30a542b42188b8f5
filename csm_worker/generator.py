"""The seed's Python API, running on the batched engine.

    from csm_worker import load_csm_1b, Segment
    generator = load_csm_1b(device="cuda")
    audio = generator.generate(text="Hello", speaker=0, context=[Segment(...)], max_audio_length_ms=10_000)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from . import backends
from .engine import memory
from .engine.engine import Engine, Finalize
from .engine.requests import ConversationDone, ConversationRequest, RenderedTurn, Segment, TurnRequest
from .engine.retries import Judge
from .model.codec import Codec
from .model.loading import DEFAULT_MODEL, LoadedModel, dtype_for, load_pretrained, resolve_device
from .model.model import CsmModel


class RenderError(RuntimeError):
    pass


class Generator:
    sample_rate = 24_000

    def __init__(self, loaded: LoadedModel, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 1, backend: str | None = None, watermark_weights: str | None = None,
                 watermark_key: tuple[int, ...] | None = None):
        self.loaded = loaded
        # generate() marks every clip, as Sesame's reference generator does (None: unmarked); render() leaves
        # marking to its caller's `finalize`, as jobs do.
        self.watermark_weights = watermark_weights
        self.watermark_key = watermark_key
        self._watermarker = None
        self.device = device
        self.model = CsmModel(loaded.hf, device, dtype, backend)
        self.codec = Codec(loaded.hf.codec_model)
        self.batch_size = batch_size
        self._engines: dict[int, Engine] = {}

    def engine(self, batch_size: int | None = None) -> Engine:
        """One engine (one set of caches) per batch size, made on first use."""
        b = batch_size or self.batch_size
        if b not in self._engines:
            self._engines[b] = Engine(self.model, self.codec, self.loaded.tokenizer, batch_size=b)
        return self._engines[b]

    def max_batch_size(self) -> int:
        """`--batch-size auto` on a GPU: the slots whose caches and step temporaries fit in free memory
        (engine/memory.py); what it chose and why is logged and kept in `self.slot_budget`."""
        self.slot_budget = memory.auto_slots(self.model)
        return self.slot_budget.slots

    def render(self, conversations: Iterable[ConversationRequest], batch_size: int | None = None,
               judge: Judge | None = None, retries: int = 0,
               finalize: Finalize | None = None) -> Iterator[RenderedTurn | ConversationDone]:
        """Batched API: many conversations, each rendered turn by turn with its earlier turns as context.
        `judge` (e.g. csm_worker.quality.judge.checks_judge()) and `retries`: a turn that fails is rendered again
        before the next turn hears it (engine/retries.py). `finalize`: changes each step's finished turns in place,
        as one batch (jobs use it for the watermark)."""
        return self.engine(batch_size).run(conversations, judge=judge, retries=retries, finalize=finalize)

    def generate(self, text: str, speaker: int, context: list[Segment] | None = None,
                 max_audio_length_ms: float = 90_000, temperature: float = 0.9, topk: int = 50,
                 seed: int | None = None) -> torch.Tensor:
        """One utterance conditioned on `context`; returns 1-D float audio at `sample_rate`."""
        if seed is None:  # follow torch's global RNG, so torch.manual_seed makes calls repeatable as before
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if any(s.audio is None for s in context or []):
            raise RenderError("every context Segment needs its audio (1-D, 24 kHz)")
        turns = [TurnRequest(i, s.speaker, s.text, audio=s.audio) for i, s in enumerate(context or [])]
        turns.append(TurnRequest(len(turns), speaker, text, temperature=temperature, top_k=topk,
                                 max_audio_length_ms=int(max_audio_length_ms), seed=seed))
        audio = None
        for event in self.render([ConversationRequest("generate", turns)], batch_size=1, finalize=self._mark()):
            if isinstance(event, RenderedTurn):
                audio = event.audio
            elif event.error:
                raise RenderError(event.error)
        if audio is None:
            raise RenderError("the engine returned no audio for this turn")
        return torch.from_numpy(audio)

    @property
    def watermarker(self):
        """generate()'s watermark (csm_worker.watermark.Watermarker), loaded on first use; None when off."""
        if self._watermarker is None and self.watermark_weights:
            from .watermark import load_watermarker

            self._watermarker = load_watermarker(self.watermark_weights, self.device)
        return self._watermarker

    def _mark(self) -> Finalize | None:
        from .watermark import REFERENCE_KEY

        marker = self.watermarker
        return marker.finalizer(self.watermark_key or REFERENCE_KEY) if marker else None


def load_csm_1b(device: str = "cuda", model: str = DEFAULT_MODEL, dtype: str | None = None,
                batch_size: int = 1, backend: str | None = None, watermark: bool | str = True,
                watermark_key: tuple[int, ...] | None = None) -> Generator:
    """Load CSM-1B (or a local folder, or a `random:*` preset) on `device` ("auto" picks CUDA when present).
    `backend`: cpu, portable or auto (csm_worker/backends); None reads $CSM_RENDER_BACKEND, else auto.
    `watermark`: generate() marks its clips with silentcipher, as the reference does: True, the weights that go
    with `model` (sony/silentcipher, or random:silentcipher for a random preset), loaded on the first generate();
    a hub id or folder of those weights; False, unmarked. `watermark_key`: 5 bytes (default the reference's)."""
    from .watermark import default_weights

    device = resolve_device(device)
    backends.resolve(device, backend)  # a bad choice fails before minutes of loading
    torch_dtype = dtype_for(device, dtype)
    weights = default_weights(model) if watermark is True else (watermark or None)
    return Generator(load_pretrained(model, device, torch_dtype), device, torch_dtype, batch_size, backend,
                     watermark_weights=weights, watermark_key=watermark_key)
