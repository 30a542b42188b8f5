"""The batched engine: batch independence, EOS, the 2048-position window, errors, seeded sampling, audio. Tests
that take `render`, `bgen` or `mixed_b3` run on both backends (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_worker import ConversationRequest, Generator, TurnRequest
from csm_worker.model.codec import Codec
from csm_worker.engine.engine import WINDOW_SLACK, Engine
from csm_worker.model.prompt import TextEncoder

WINDOW = 2048


def codes_of(turns):
    return {key: t.codes for key, t in turns.items()}


def assert_same_codes(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


# -- batch independence -------------------------------------------------------------------------------------------

def test_codes_do_not_depend_on_batch_size_or_reused_engine(bgen, render, collect, mixed, mixed_b3):
    b3, _, _ = mixed_b3
    b1, dones, _ = render(mixed(), batch_size=1)
    assert all(d.error is None for d in dones.values())
    assert_same_codes(codes_of(b1), codes_of(b3))
    # The generator keeps one engine per batch size: a second run on its (used) caches gives the same codes.
    again, _, _ = collect(bgen.render(mixed(), batch_size=3))
    assert_same_codes(codes_of(again), codes_of(b3))
    # And a batch larger than the number of conversations (idle rows throughout).
    b8, _, _ = render(mixed(), batch_size=8)
    assert_same_codes(codes_of(b8), codes_of(b3))


# -- EOS ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eos_at", [3, 0])
def test_eos_frame_ends_the_turn_and_serves_as_context(bgen, render, hf_greedy, monkeypatch, eos_at):
    """Random weights never emit an all-zero frame by themselves, so the test forces one: row 0's frame `eos_at`
    of its first turn becomes the EOS frame (and the engine feeds it to the backbone, as it would a real one).
    At 0 the turn ends without a single frame."""
    convs = lambda: [
        ConversationRequest("eos", [TurnRequest(0, 0, "Stop early please", top_k=1, max_audio_length_ms=8 * 80),
                                    TurnRequest(1, 1, "Next turn", top_k=1, max_audio_length_ms=4 * 80)]),
        ConversationRequest("other", [TurnRequest(0, 1, "A longer neighbour", top_k=1, max_audio_length_ms=10 * 80)]),
    ]
    plain, _, _ = render(convs(), batch_size=2)

    original = bgen.model.sample_frame
    calls = []

    def forced(caches, rows, h, params, frame_index):
        codes = original(caches, rows, h, params, frame_index)
        if len(calls) == eos_at:
            codes[0] = 0
        calls.append(frame_index.tolist())
        return codes

    monkeypatch.setattr(bgen.model, "sample_frame", forced)
    turns, dones, _ = render(convs(), batch_size=2, decode_audio=True)
    monkeypatch.undo()
    assert calls[eos_at][0] == eos_at, "row 0 was in its first turn at the forced step"

    first, second = turns[("eos", 0)], turns[("eos", 1)]
    assert first.end_reason == "eos"
    assert first.codes.shape == (32, eos_at)  # the EOS frame itself is not part of the turn
    assert first.audio.shape == (eos_at * 1920,)
    np.testing.assert_array_equal(first.codes, plain[("eos", 0)].codes[:, :eos_at])
    assert second.end_reason == "max_length" and second.codes.shape == (32, 4)
    # The next turn's context is the cut turn plus its EOS frame, exactly as HF lays it out from scratch.
    ref = hf_greedy([(0, "Stop early please", first.codes)], 1, "Next turn", 4)
    np.testing.assert_array_equal(second.codes, ref)
    # The neighbour in the batch did not notice.
    np.testing.assert_array_equal(turns[("other", 0)].codes, plain[("other", 0)].codes)
    assert dones["eos"].error is None and dones["eos"].turns_rendered == 2


# -- window -------------------------------------------------------------------------------------------------------

def test_long_conversation_drops_oldest_rendered_turns_but_keeps_the_voice_prompt(gen, render, noise_audio):
    encode = TextEncoder(gen.loaded.tokenizer).encode
    voice = noise_audio(3, seed=9)
    # About 27 positions a turn: the window fills up around turn 75 and is trimmed again every ~19 turns.
    spec = [(i % 2, f"Line {i:02d}, a short one.", 2 if i % 5 == 0 else 1) for i in range(1, 100)]
    turns = [TurnRequest(0, 1, "The voice prompt.", audio=voice)]
    turns += [TurnRequest(i, spk, text, top_k=1, max_audio_length_ms=frames * 80)
              for i, (spk, text, frames) in enumerate(spec, start=1)]
    rendered, dones, _ = render([ConversationRequest("long", turns)], batch_size=1)
    assert dones["long"].error is None and dones["long"].turns_rendered == 99
    assert sorted(i for _, i in rendered) == list(range(1, 100))

    # Replay the documented rule: before a turn, drop the oldest rendered turns (never the given voice prompt)
    # until context + the turn's text + its max frames fit in the window. Each context turn holds its text
    # tokens, its frames and one EOS frame.
    voice_len = len(encode(1, "The voice prompt.")) + 3 + 1
    kept: list[int] = []
    kept_before = {}
    size = lambda i: len(encode(spec[i - 1][0], spec[i - 1][1])) + rendered[("long", i)].num_frames + 1
    total = voice_len
    for i, (spk, text, frames) in enumerate(spec, start=1):
        need = len(encode(spk, text)) + frames
        if voice_len + sum(size(k) for k in kept) + need > WINDOW:
            # Over the window: drop until WINDOW_SLACK positions are free besides the turn's own.
            while kept and voice_len + sum(size(k) for k in kept) + need > WINDOW - WINDOW_SLACK:
                kept.pop(0)
        kept_before[i] = list(kept)
        kept.append(i)
        total += size(i)
    assert total > WINDOW + 500, "the conversation must outgrow the window"
    first_drop = min(i for i in kept_before if kept_before[i] != list(range(1, i)))
    checked = [first_drop, first_drop + 1, 90, 99]
    assert first_drop < 90 and len(kept_before[99]) < 90

    fresh = []
    for i in checked:
        ctx = [TurnRequest(0, 1, "The voice prompt.", audio=voice)]
        ctx += [TurnRequest(k, spec[k - 1][0], spec[k - 1][1], codes=rendered[("long", k)].codes)
                for k in kept_before[i]]
        fresh.append(ConversationRequest(f"fresh{i}", ctx + [turns[i]]))
    again, dones2, _ = render(fresh, batch_size=1)
    assert all(d.error is None for d in dones2.values())
    for i in checked:
        np.testing.assert_array_equal(again[(f"fresh{i}", i)].codes, rendered[("long", i)].codes,
                                      err_msg=f"turn {i} (context: voice + turns {kept_before[i][:1]}..)")


def test_overflowing_conversations_fail_alone(render, noise_audio):
    long_text = "x" * (WINDOW + 10)  # a byte-level tokenizer: one position per character
    convs = [
        ConversationRequest("given-too-long", [TurnRequest(0, 0, long_text, audio=noise_audio(1)),
                                               TurnRequest(1, 1, "Never rendered", top_k=1)]),
        ConversationRequest("fine", [TurnRequest(0, 0, "Fine", top_k=1, max_audio_length_ms=3 * 80),
                                     TurnRequest(1, 1, "Still fine", top_k=1, max_audio_length_ms=2 * 80)]),
        ConversationRequest("late-fail", [TurnRequest(0, 0, "First is ok", top_k=1, max_audio_length_ms=2 * 80),
                                          TurnRequest(1, 1, "Second asks too much", top_k=1,
                                                      max_audio_length_ms=(WINDOW + 1) * 80)]),
        ConversationRequest("after", [TurnRequest(0, 1, "Joins later", top_k=1, max_audio_length_ms=2 * 80)]),
    ]
    solo, _, _ = render([convs[1]], batch_size=1)
    turns, dones, _ = render(convs, batch_size=2)

    bad = dones["given-too-long"]
    assert bad.error and "window" in bad.error and bad.error_type == "ContextTooLong"
    assert bad.turns_rendered == 0 and not any(cid == "given-too-long" for cid, _ in turns)
    late = dones["late-fail"]
    assert late.error and "window" in late.error and late.turns_rendered == 1
    assert ("late-fail", 0) in turns and ("late-fail", 1) not in turns
    for cid in ("fine", "after"):
        assert dones[cid].error is None
    assert sorted(turns) == [("after", 0), ("fine", 0), ("fine", 1), ("late-fail", 0)]
    for key in solo:
        np.testing.assert_array_equal(turns[key].codes, solo[key].codes)


# -- seeded sampling ----------------------------------------------------------------------------------------------

def _sampled(cid, seed, frames=(6, 5)):
    return ConversationRequest(cid, [
        TurnRequest(i, i % 2, f"Sampled turn {i}", top_k=50, temperature=0.9, seed=seed + i,
                    max_audio_length_ms=n * 80)
        for i, n in enumerate(frames)])


def test_seeded_sampling_is_reproducible_and_batch_independent(render):
    a, _, _ = render([_sampled("s", 7)], batch_size=1)
    b, _, _ = render([_sampled("s", 7)], batch_size=1)
    c, _, _ = render([_sampled("s", 8)], batch_size=1)
    greedy, _, _ = render([ConversationRequest("s", [
        TurnRequest(i, i % 2, f"Sampled turn {i}", top_k=1, max_audio_length_ms=n * 80)
        for i, n in enumerate((6, 5))])], batch_size=1)
    assert_same_codes(codes_of(a), codes_of(b))
    for key in a:
        assert not np.array_equal(a[key].codes, c[key].codes), f"{key}: another seed gave the same codes"
        assert not np.array_equal(a[key].codes, greedy[key].codes), f"{key}: sampling gave the greedy codes"
        assert a[key].codes.min() >= 0 and a[key].codes.max() < 2051

    # The same conversation in a batch of 3 beside sampled and greedy neighbours: it joins mid-run, in row 1,
    # when "n1" finishes, so its frames are sampled at other engine steps than when it ran alone.
    mixed = [
        ConversationRequest("n2", [TurnRequest(0, 0, "Greedy neighbour with more text", top_k=1,
                                               max_audio_length_ms=9 * 80)]),
        _sampled("n1", 1000, frames=(3,)),
        _sampled("n3", 2000, frames=(4, 4)),
        _sampled("s", 7),
    ]
    batched, dones, _ = render(mixed, batch_size=3)
    assert all(d.error is None for d in dones.values())
    for key in a:
        np.testing.assert_array_equal(batched[key].codes, a[key].codes, err_msg=str(key))


# -- audio --------------------------------------------------------------------------------------------------------

def tolerance(audio: np.ndarray) -> float:
    """1e-5 of the peak: batched and single float32 convolutions round differently, in proportion to the signal
    (the preset's audio peaks at about 8; measured differences are below 1e-6 of the peak)."""
    return 1e-5 * max(1.0, float(np.abs(audio).max()))


def test_rendered_audio_is_the_decoded_codes(gen, mixed_b3):
    turns, _, _ = mixed_b3
    for key, turn in turns.items():
        assert turn.audio is not None and turn.audio.dtype == np.float32 and turn.audio.ndim == 1
        assert turn.sample_rate == 24_000
        assert len(turn.audio) == turn.num_frames * 1920, key
    some = [turns[("c1", 1)], turns[("c2", 0)], turns[("c3", 0)]]
    for turn in some:
        alone = gen.codec.decode(turn.codes)
        np.testing.assert_allclose(turn.audio, alone, atol=tolerance(alone), rtol=0)
    assert np.abs(some[0].audio).max() > 0
    # Audio follows the codes (first frames of two different turns sound different).
    assert not np.allclose(some[0].audio[:1920], some[1].audio[:1920])


def test_given_audio_is_encoded_once_per_content(gen, collect, noise_audio, monkeypatch):
    codec = Codec(gen.codec.mimi)
    calls = []
    encode = codec.mimi.encode
    monkeypatch.setattr(codec.mimi, "encode", lambda x, *a, **k: calls.append(x.shape) or encode(x, *a, **k))
    a, b = noise_audio(3, seed=1), noise_audio(3, seed=2)  # same length, other content
    codes_a, codes_b = codec.encode(a), codec.encode(b)
    assert len(calls) == 2 and not np.array_equal(codes_a, codes_b)
    np.testing.assert_array_equal(codec.encode(a.copy()), codes_a)
    np.testing.assert_array_equal(codec.encode(torch.from_numpy(b)), codes_b)
    assert len(calls) == 2, "the same audio was encoded again"

    # In the engine: every conversation sharing a voice prompt reuses its codes.
    engine = Engine(gen.model, codec, gen.loaded.tokenizer, batch_size=2, decode_audio=False)
    voiced = lambda cid, audio: ConversationRequest(cid, [TurnRequest(0, 1, "Voice", audio=audio),
                                                          TurnRequest(1, 0, "Hi", top_k=1, max_audio_length_ms=80)])
    turns, _, _ = collect(engine.run([voiced("x", a), voiced("y", b), voiced("z", a.copy())]))
    assert len(calls) == 2
    np.testing.assert_array_equal(turns[("x", 1)].codes, turns[("z", 1)].codes)
    assert not np.array_equal(turns[("x", 1)].codes, turns[("y", 1)].codes), "the voice prompt made no difference"


def test_batched_decode_equals_one_by_one(gen, mixed_b3):
    turns, _, _ = mixed_b3
    codes = [turns[k].codes for k in [("c2", 0), ("c0", 0), ("c3", 0), ("c1", 1)]]  # 7, 4, 2 and 6 frames
    together = gen.codec.decode_many(codes)
    assert [len(a) for a in together] == [c.shape[1] * 1920 for c in codes]
    for c, a in zip(codes, together):
        alone = gen.codec.decode(c)
        np.testing.assert_allclose(a, alone, atol=tolerance(alone), rtol=0)
    assert gen.codec.decode_many([]) == []
    empty = gen.codec.decode(np.zeros((32, 0), dtype=np.int64))
    assert empty.shape == (0,)


# -- engine state across runs -------------------------------------------------------------------------------------

def test_conversations_with_nothing_to_render_finish_at_once(render, noise_audio):
    convs = [
        ConversationRequest("empty", []),
        ConversationRequest("given-only", [TurnRequest(0, 0, "Only a voice", audio=noise_audio(1)),
                                           TurnRequest(1, 1, "and codes", codes=np.ones((32, 2), dtype=np.int64))]),
        ConversationRequest("real", [TurnRequest(0, 0, "Rendered", top_k=1, max_audio_length_ms=160)]),
    ]
    turns, dones, events = render(convs, batch_size=1)
    assert sorted(turns) == [("real", 0)]
    assert [(d.conversation_id, d.error, d.turns_rendered) for d in dones.values()] == \
        [("empty", None, 0), ("given-only", None, 0), ("real", None, 1)]


def test_an_abandoned_render_does_not_poison_the_next(gen, collect):
    fresh = Generator(gen.loaded, "cpu", torch.float32)  # its own engines: this test must not poison `gen`'s
    first = ConversationRequest("abandoned", [TurnRequest(i, 0, "Left behind", top_k=1, max_audio_length_ms=160)
                                              for i in range(2)])
    for _ in fresh.render([first], batch_size=1):
        break
    turns, dones, _ = collect(fresh.render([ConversationRequest("next", [
        TurnRequest(0, 1, "Rendered after", top_k=1, max_audio_length_ms=160)])], batch_size=1))
    assert sorted(turns) == [("next", 0)] and sorted(dones) == ["next"]
    assert fresh.generate("Still works", 0, max_audio_length_ms=160, seed=1).shape == (2 * 1920,)


def test_an_iterable_that_is_not_ready_yet_gets_asked_again(render, mixed):
    """A work queue fed from elsewhere yields None for "none ready yet": the engine keeps decoding the rows it has
    (or waits when it has none) and asks again, and the codes are those of a plain list."""
    plain, _, _ = render(mixed(), batch_size=3)
    asked = []

    def trickle():
        for conv in mixed():
            for _ in range(3):  # "not yet" three times before each conversation
                asked.append(None)
                yield None
            yield conv

    turns, dones, _ = render(trickle(), batch_size=3)
    assert len(asked) == 3 * len(mixed())
    assert sorted(dones) == sorted(c.conversation_id for c in mixed())
    assert_same_codes(codes_of(turns), codes_of(plain))
