"""Shared voice-prompt prefixes (csm_worker/engine/prefix_cache.py): computed once per engine and copied into new slots,
with exactly the codes of an engine that prefills them in each slot, on both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_worker import ConversationRequest, RenderedTurn, TurnRequest
from csm_worker.engine.prefix_cache import PrefixCache


def cast_turns(noise_audio, cast: str) -> list[TurnRequest]:
    """Two voice prompts, as jobs' --voices puts them before every conversation (negative turn indices)."""
    seed = 1 if cast == "A" else 5
    return [TurnRequest(-2, 0, f"Cast {cast}, speaker zero.", audio=noise_audio(3, seed=seed)),
            TurnRequest(-1, 1, f"Cast {cast}, speaker one.", audio=noise_audio(2, seed=seed + 1))]


def conversations(noise_audio, sampled: bool) -> list[ConversationRequest]:
    """Six conversations at batch 3: four share cast A (one of them joins late, when a slot frees), one has cast
    B, one none; greedy or seeded sampling."""
    settings = dict(temperature=0.8, top_k=20) if sampled else dict(top_k=1)
    spec = {"a1": ("A", 2), "a2": ("A", 3), "b1": ("B", 2), "none": (None, 2), "a3": ("A", 1), "a4": ("A", 2)}
    out = []
    for n, (cid, (cast, turns)) in enumerate(spec.items()):
        prompts = cast_turns(noise_audio, cast) if cast else []
        lines = [TurnRequest(i, i % 2, f"{cid} line {i}.", max_audio_length_ms=(2 + (i + n) % 3) * 80,
                             seed=100 * n + i, **settings) for i in range(turns)]
        out.append(ConversationRequest(cid, prompts + lines))
    return out


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_copied_prefixes_give_the_codes_of_prefixes_prefilled_in_the_slot(render, noise_audio, sampled):
    with_cache, dones, _ = render(conversations(noise_audio, sampled), batch_size=3)
    without, _, _ = render(conversations(noise_audio, sampled), batch_size=3, prefix_cache_bytes=0)
    assert all(d.error is None for d in dones.values())
    assert sorted(with_cache) == sorted(without) and len(with_cache) == 12
    for key in without:
        np.testing.assert_array_equal(with_cache[key].codes, without[key].codes, err_msg=str(key))


def test_each_distinct_prefix_is_prefilled_once(bgen, noise_audio):
    from csm_worker.engine.engine import Engine

    def run(**args):
        engine = Engine(bgen.model, bgen.codec, bgen.loaded.tokenizer, batch_size=3, decode_audio=False, **args)
        list(engine.run(conversations(noise_audio, sampled=False)))
        return engine

    cached, plain = run(), run(prefix_cache_bytes=0)
    # Two spans per cast, kept one by one: A's two once, B's two once, then A's two for each of 3 more.
    assert (cached.prefixes.misses, cached.prefixes.hits, len(cached.prefixes)) == (4, 6, 4)
    a_len = cached.stats["prefix_positions_copied"] // 3
    assert a_len > 0 and cached.stats["prefix_positions_copied"] == 3 * a_len
    assert plain.stats["prefill_positions"] - cached.stats["prefill_positions"] == 3 * a_len


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded"])
def test_conversations_sharing_their_first_prompts_share_those(bgen, render, noise_audio, sampled):
    """A narrator's prompt, then one of two guests' (a cast whose conversations use different speakers): the
    narrator's span is prefilled once for all, each guest's once on top of it, and the codes are those of
    engines that prefill everything in each slot."""
    from csm_worker.engine.engine import Engine

    narrator = TurnRequest(-2, 0, "The narrator speaks.", audio=noise_audio(3, seed=1))
    guests = {g: TurnRequest(-1, 1, f"Guest {g} here.", audio=noise_audio(2, seed=10 + g)) for g in (1, 2)}
    settings = dict(temperature=0.8, top_k=20) if sampled else dict(top_k=1)

    def make():
        return [ConversationRequest(f"c{n}", [narrator, guests[1 + n % 2]] + [
            TurnRequest(i, i % 2, f"c{n} line {i}.", max_audio_length_ms=3 * 80, seed=10 * n + i, **settings)
            for i in range(2)]) for n in range(5)]

    engine = Engine(bgen.model, bgen.codec, bgen.loaded.tokenizer, batch_size=2, decode_audio=False)
    events = list(engine.run(make()))
    # The narrator once, each guest once; then 3 more narrators and 3 more guests copied.
    assert (engine.prefixes.misses, engine.prefixes.hits, len(engine.prefixes)) == (3, 7, 3)
    with_cache = {(e.conversation_id, e.turn_index): e for e in events if isinstance(e, RenderedTurn)}
    without, dones, _ = render(make(), batch_size=2, prefix_cache_bytes=0)
    assert all(d.error is None for d in dones.values()) and sorted(with_cache) == sorted(without)
    for key in without:
        np.testing.assert_array_equal(with_cache[key].codes, without[key].codes, err_msg=str(key))


def test_a_window_slide_copies_the_prefix_back(render, gen, noise_audio):
    """A conversation that outgrows the window drops old rendered turns and rebuilds its context: its prompts
    come back from the cache, with the same codes as a rebuild that prefills them."""
    lines = [TurnRequest(i, i % 2, f"Line {i:02d}, a short one.", top_k=1, max_audio_length_ms=80)
             for i in range(80)]
    make = lambda: [ConversationRequest("long", cast_turns(noise_audio, "A") + lines)]
    with_cache, dones, _ = render(make(), batch_size=1)
    without, _, _ = render(make(), batch_size=1, prefix_cache_bytes=0)
    assert dones["long"].error is None and len(with_cache) == 80
    for key in without:
        np.testing.assert_array_equal(with_cache[key].codes, without[key].codes, err_msg=str(key))


def test_the_cache_drops_the_least_recently_used_prefix_past_its_bytes():
    entry = lambda: (torch.zeros(2, 2, 8, 4), torch.zeros(2, 2, 8, 4))  # 2 x 512 bytes
    cache = PrefixCache(max_bytes=2 * 1024 + 100)
    cache.put("a", *entry())
    cache.put("b", *entry())
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", *entry())
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 2 * 1024 and len(cache) == 2
    cache.put("huge", torch.zeros(1000), torch.zeros(1000))  # larger than the whole cache: not kept
    assert cache.get("huge") is None and len(cache) == 2
