"""Shared fixtures for the csm_worker tests: one `random:tiny` generator per session (CPU, float32), built into a
temporary cache folder, and the reference helpers that rebuild a turn from scratch with transformers' own
`CsmForConditionalGeneration.generate` (greedy), which is what the engine must match."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_worker import ConversationDone, Generator, RenderedTurn, load_csm_1b
from csm_worker.engine.engine import Engine
from csm_worker.model.prompt import TextEncoder

SAMPLES_PER_FRAME = 1920


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """CSM_RENDER_CACHE for the whole session: presets and the native top-k are built here, never in the
    user's home."""
    path = tmp_path_factory.mktemp("csm-render-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("CSM_RENDER_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def gen(cache_dir):
    """`random:tiny` as `load_csm_1b` loads it (CPU, float32).

    One intra-op thread: the tiny model's steps are a few microseconds of arithmetic each, so extra threads only
    add synchronisation, and on a shared 2-core machine they made these tests 2-6x slower and erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_csm_1b("cpu", "random:tiny")
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", params=["cpu", "portable"])
def bgen(request, gen):
    """`gen`'s weights on each backend (csm_worker/backends): `cpu` (oneDNN, TorchScript, C top-k, row split)
    and `portable` (plain PyTorch ops, the code CUDA runs). Tests of the engine's results take this fixture, so
    a bug in either path fails on CPU."""
    if request.param == "cpu":
        yield gen
        return
    yield Generator(gen.loaded, "cpu", torch.float32, backend=request.param)


@pytest.fixture(scope="session")
def hf(gen):
    return gen.loaded.hf


@pytest.fixture(scope="session")
def text_ids(gen):
    encoder = TextEncoder(gen.loaded.tokenizer)
    return encoder.encode  # (speaker, text) -> [bos, ..."[speaker]text"..., eos]


@pytest.fixture(scope="session")
def hf_greedy(hf, text_ids):
    """Reference: greedy HF generate of one turn from scratch. `context` is a list of (speaker, text, codes
    [32, n]) laid out as the CSM reference does (text tokens, audio frames, one all-zero EOS frame). Returns
    codes [32, frames] (HF stops early only on an all-zero frame, which it then drops)."""
    return hf_greedy_on(hf, text_ids)


def hf_greedy_on(hf, text_ids):
    """hf_greedy for a transformers model on any device (test_device.py runs it on CUDA)."""
    device = next(hf.parameters()).device

    @torch.no_grad()
    def run(context, speaker: int, text: str, frames: int) -> np.ndarray:
        ids = lambda spk, txt: torch.tensor(text_ids(spk, txt), device=device)
        parts = []
        for spk, txt, codes in context:
            parts.append(hf.embed_text_tokens(ids(spk, txt)))
            codes = torch.as_tensor(np.asarray(codes), dtype=torch.long, device=device)  # [32, n]
            with_eos = torch.cat([codes.T, torch.zeros(1, 32, dtype=torch.long, device=device)])  # [n + 1, 32]
            parts.append(hf.backbone_model.embed_tokens(with_eos[None])[0])
        parts.append(hf.embed_text_tokens(ids(speaker, text)))
        embeds = torch.cat(parts)[None]
        out = hf.generate(inputs_embeds=embeds, max_new_tokens=frames, do_sample=False,
                          depth_decoder_do_sample=False)
        out = out[0]  # [frames, 32]
        eos = (out == 0).all(dim=-1).nonzero()
        if eos.numel():
            out = out[: eos.min()]
        return out.T.cpu().numpy()

    return run


@pytest.fixture(scope="session")
def render(bgen):
    """Render with a fresh engine (fresh caches) on each backend and collect the events:
    returns ({(conversation_id, turn_index): RenderedTurn}, {conversation_id: ConversationDone}, [events])."""

    def run(conversations, batch_size: int, decode_audio: bool = False, **engine_args):
        engine = Engine(bgen.model, bgen.codec, bgen.loaded.tokenizer, batch_size=batch_size,
                        decode_audio=decode_audio, **engine_args)
        return collect(engine.run(conversations))

    return run


@pytest.fixture(scope="session", name="collect")
def collect_fixture():
    return collect


def collect(events):
    events = list(events)
    turns, dones = {}, {}
    for e in events:
        if isinstance(e, RenderedTurn):
            key = (e.conversation_id, e.turn_index)
            assert key not in turns, f"turn {key} rendered twice"
            turns[key] = e
        else:
            assert isinstance(e, ConversationDone), e
            assert e.conversation_id not in dones, f"conversation {e.conversation_id} done twice"
            dones[e.conversation_id] = e
    return turns, dones, events


@pytest.fixture(scope="session")
def noise_audio():
    """1-D float32 noise at 24 kHz of exactly `frames` Mimi frames, deterministic per (frames, seed)."""

    def make(frames: int, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        t = np.arange(frames * SAMPLES_PER_FRAME) / 24_000
        tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
        return (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)

    return make


# A mixed batch: prompt lengths from 3 to ~60 characters, 1 to 3 turns, per-turn lengths from 2 to 7 frames, two
# speakers. At batch_size 3, conversation "c0" finishes early and "c3" takes its slot while others are mid-turn.
MIXED = {
    "c0": [(0, "Hi.", 4)],
    "c1": [(0, "This one has a rather long opening line, to shift positions.", 3), (1, "Sure.", 6),
           (0, "And a third turn that reuses the kept context.", 2)],
    "c2": [(1, "Speaker one starts here", 7), (0, "then zero answers", 3)],
    "c3": [(0, "Medium length words", 2)],
    "c4": [(1, "Ok", 5), (1, "The same speaker twice in a row", 4)],
    "c5": [(0, "One", 2), (1, "Two two", 3), (0, "Three three three", 4)],
}


def mixed_conversations():
    from csm_worker import ConversationRequest, TurnRequest

    return [
        ConversationRequest(cid, [TurnRequest(i, spk, text, top_k=1, max_audio_length_ms=frames * 80)
                                  for i, (spk, text, frames) in enumerate(turns)])
        for cid, turns in MIXED.items()
    ]


@pytest.fixture(scope="session")
def mixed():
    return mixed_conversations  # a fresh list of requests per call


@pytest.fixture(scope="session")
def mixed_spec():
    return MIXED


@pytest.fixture(scope="session")
def mixed_b3(bgen):
    """The mixed batch rendered once per backend through the public API at batch_size 3, audio included."""
    return collect(bgen.render(mixed_conversations(), batch_size=3))


def sampled_mix_conversations():
    """Slots joining and leaving: 5 conversations in 3 slots, greedy and sampled rows with different top_k and
    temperatures, 1-3 turns of 2-7 frames; one turn long enough that rows sit in different length buckets."""
    from csm_worker import ConversationRequest, TurnRequest

    t = lambda i, spk, text, frames, k, temp=0.9, seed=0: TurnRequest(i, spk, text, top_k=k, temperature=temp,
                                                                    seed=seed, max_audio_length_ms=frames * 80)
    return [
        ConversationRequest("a", [t(0, 0, "Hi.", 4, 1)]),
        ConversationRequest("b", [t(0, 1, "A rather long opening line to shift the positions around.", 3, 50,
                                    seed=3), t(1, 0, "Sure.", 6, 7, 1.3, seed=4)]),
        ConversationRequest("c", [t(0, 1, "x" * 300, 5, 50, seed=5), t(1, 0, "then zero", 3, 1)]),
        ConversationRequest("d", [t(0, 0, "Joins late", 2, 2051, 0.7, seed=6)]),
        ConversationRequest("e", [t(0, 1, "Ok", 7, 50, 0.0, seed=7), t(1, 1, "Twice", 4, 3, seed=8)]),
    ]
