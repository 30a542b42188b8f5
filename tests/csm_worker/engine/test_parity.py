"""Greedy parity of the batched engine with transformers' `CsmForConditionalGeneration.generate`, on both
backends (the `bgen` and `render` fixtures).

Every comparison here is exact (codes are integers): on CPU float32 the engine's lean forward pass gives the same
argmax as transformers at every step for `random:tiny`, so no tolerance is needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_worker import ConversationRequest, RenderedTurn, TurnRequest


def test_single_turn_equals_hf_generate(bgen, hf, text_ids):
    frames = 10
    events = list(bgen.render([ConversationRequest("one", [
        TurnRequest(0, 0, "Hello there", top_k=1, max_audio_length_ms=frames * 80)])], batch_size=1))
    turns = [e for e in events if isinstance(e, RenderedTurn)]
    assert len(turns) == 1 and turns[0].end_reason == "max_length"
    assert events[-1].conversation_id == "one" and events[-1].error is None

    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor([text_ids(0, "Hello there")]), max_new_tokens=frames,
                          do_sample=False, depth_decoder_do_sample=False)[0]
    assert ref.shape == (frames, 32)
    assert turns[0].codes.shape == (32, frames)
    np.testing.assert_array_equal(turns[0].codes, ref.T.numpy())


def test_mixed_batch_every_turn_equals_hf_from_scratch(mixed_b3, mixed_spec, hf_greedy):
    MIXED = mixed_spec
    turns, dones, events = mixed_b3
    assert set(dones) == set(MIXED) and all(d.error is None for d in dones.values())
    assert {d.conversation_id: d.turns_rendered for d in dones.values()} == {c: len(t) for c, t in MIXED.items()}
    # Slots were reused mid-run: a conversation finished before a later one rendered its first turn.
    order = [(type(e).__name__, e.conversation_id) for e in events]
    assert order.index(("ConversationDone", "c0")) < order.index(("RenderedTurn", "c3"))
    assert order.index(("RenderedTurn", "c3")) < order.index(("ConversationDone", "c1"))

    for cid, spec in MIXED.items():
        context = []
        for i, (speaker, text, frames) in enumerate(spec):
            got = turns[(cid, i)]
            assert (got.speaker, got.text, got.end_reason) == (speaker, text, "max_length")
            assert got.codes.shape == (32, frames)
            ref = hf_greedy(context, speaker, text, frames)
            np.testing.assert_array_equal(got.codes, ref, err_msg=f"{cid} turn {i}")
            context.append((speaker, text, got.codes))


def test_given_audio_turn_matches_hf_audio_path(bgen, hf, text_ids, noise_audio, hf_greedy):
    cfg = hf.config
    prompt_frames, frames = 5, 6
    audio = noise_audio(prompt_frames, seed=3)
    conv = ConversationRequest("voice", [
        TurnRequest(0, 1, "A voice prompt.", audio=audio),
        TurnRequest(1, 0, "Answer in kind.", top_k=1, max_audio_length_ms=frames * 80),
        TurnRequest(2, 1, "And back again.", top_k=1, max_audio_length_ms=4 * 80),
    ])
    events = list(bgen.render([conv], batch_size=2))
    rendered = {e.turn_index: e for e in events if isinstance(e, RenderedTurn)}
    assert sorted(rendered) == [1, 2], "a given turn is context only, never rendered"
    assert events[-1].error is None and events[-1].turns_rendered == 2

    # HF encodes the audio itself (input_values) and places it at the audio placeholder tokens.
    with torch.no_grad():
        hf_codes = hf.codec_model.encode(torch.from_numpy(audio)[None, None]).audio_codes[0]  # [32, frames]
    assert hf_codes.shape == (32, prompt_frames) and hf_codes.any()
    np.testing.assert_array_equal(bgen.codec.encode(audio), hf_codes.numpy())
    ids = (text_ids(1, "A voice prompt.") + [cfg.audio_token_id] * prompt_frames + [cfg.audio_eos_token_id]
           + text_ids(0, "Answer in kind."))
    # The explicit attention mask matters: CSM's config uses the audio placeholder id as its pad id, so without
    # it `generate` would mask the audio positions out as padding (CsmProcessor always passes one).
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        ref = hf.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                          input_values=torch.from_numpy(audio)[None, None],
                          input_values_cutoffs=torch.tensor([[len(audio)]]), max_new_tokens=frames,
                          do_sample=False, depth_decoder_do_sample=False)[0]
    np.testing.assert_array_equal(rendered[1].codes, ref.T.numpy())

    # The turn after: context = the given audio's codes (as HF's Mimi encodes them) + the rendered turn.
    ref2 = hf_greedy([(1, "A voice prompt.", hf_codes.numpy()), (0, "Answer in kind.", rendered[1].codes)],
                     1, "And back again.", 4)
    np.testing.assert_array_equal(rendered[2].codes, ref2)


@pytest.mark.parametrize("top_k", [1, 50], ids=["greedy", "sampled"])
def test_kept_cache_equals_fresh_render_from_given_codes(render, noise_audio, top_k):
    """Turn k rendered on the conversation's kept cache (incremental prefills: the previous turn's EOS frame, a
    given turn in between, the new text) equals turn k rendered by a fresh engine whose context is the earlier
    turns handed over as given `codes`."""
    audio = noise_audio(3, seed=5)
    spec = [(0, "First we speak.", 5), (1, "a given reply", None), (0, "Then once more", 4), (1, "Last.", 3)]

    def turn(i, **given):
        speaker, text, frames = spec[i]
        if given:
            return TurnRequest(i, speaker, text, **given)
        return TurnRequest(i, speaker, text, top_k=top_k, temperature=0.9, seed=100 + i,
                           max_audio_length_ms=frames * 80)

    full, _, _ = render([ConversationRequest("kept", [turn(0), turn(1, audio=audio), turn(2), turn(3)])], 1)
    assert sorted(full) == [("kept", 0), ("kept", 2), ("kept", 3)]

    fresh2 = ConversationRequest("fresh2", [turn(0, codes=full[("kept", 0)].codes), turn(1, audio=audio), turn(2)])
    fresh3 = ConversationRequest("fresh3", [turn(0, codes=full[("kept", 0)].codes), turn(1, audio=audio),
                                            turn(2, codes=full[("kept", 2)].codes), turn(3)])
    got2, _, _ = render([fresh2], 1)
    got3, _, _ = render([fresh3], 1)
    assert sorted(got2) == [("fresh2", 2)] and sorted(got3) == [("fresh3", 3)]
    np.testing.assert_array_equal(got2[("fresh2", 2)].codes, full[("kept", 2)].codes)
    np.testing.assert_array_equal(got3[("fresh3", 3)].codes, full[("kept", 3)].codes)


def test_embeddings_are_transformers_own(gen, hf, text_ids):
    """The lean model's embedding lookups give transformers' values exactly (frames: 32 codebooks summed)."""
    codes = torch.randint(0, hf.config.vocab_size, (7, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_frames = hf.backbone_model.embed_tokens(codes[None])[0]
        tokens = torch.tensor(text_ids(1, "Some words"))
        want_text = hf.embed_text_tokens(tokens)
    assert torch.equal(gen.model.embed_frames(codes), want_frames)
    assert torch.equal(gen.model.embed_text(tokens), want_text)
