"""The depth decoder's loop (`csm_worker.model.depth`): scripted and eager runs give the same codes and caches."""

from __future__ import annotations

import pytest
import torch

from csm_worker.model import depth, transformer
from csm_worker.backends import cpu
from csm_worker.backends.portable import PortableBackend
from csm_worker.model.sampling import SamplingParams


def frame(model, codebooks, params, rows=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    caches = model.new_caches(rows + 2)
    h = torch.randn(rows, model.dim, generator=g)
    model.codebooks = codebooks
    codes = model.sample_frame(caches, slice(2, 2 + rows), h, params, torch.arange(rows))
    return codes, caches["decoder"]


@pytest.mark.parametrize("top_k", [[1] * 5, [50] * 5, [1, 7, 50, 2051, 3]], ids=["greedy", "sampled", "mixed"])
def test_scripted_loop_equals_the_eager_one(gen, top_k):
    model = gen.model
    scripted = cpu.CpuBackend().compile(depth.codebooks)
    assert isinstance(scripted, torch.jit.ScriptFunction)
    params = SamplingParams.build([0.7, 0.9, 1.0, 1.3, 0.8], top_k, [11, 12, 13, 14, 15], "cpu")
    try:
        eager_codes, eager_cache = frame(model, depth.codebooks, params)
        script_codes, script_cache = frame(model, scripted, params)
    finally:
        model.codebooks = scripted
    assert eager_codes.shape == (5, 32)
    assert torch.equal(eager_codes, script_codes)
    assert all(torch.equal(a, b) for a, b in zip(eager_cache, script_cache))
    # Rows outside the call's block are untouched.
    assert not eager_cache[0][:, :2].any() and eager_cache[0][:, 2:].any()


def test_the_portable_backend_and_a_failed_script_run_the_plain_function(monkeypatch, caplog):
    assert PortableBackend().compile(depth.codebooks) is depth.codebooks
    assert PortableBackend().compile(transformer.forward) is transformer.forward

    def broken(fn):
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(torch.jit, "script", broken)
    assert cpu.script.__wrapped__(depth.codebooks) is depth.codebooks
    assert "TorchScript unavailable for codebooks" in caplog.text


@pytest.mark.parametrize("case", ["prefill", "prefill_one_row", "decode"])
def test_scripted_stack_forward_equals_the_eager_one(gen, case):
    """The backbone's forward (prefill with and without a mask, a masked decode step), scripted and eager."""
    stack = gen.model.backbone
    assert isinstance(stack._forward, torch.jit.ScriptFunction)
    g = torch.Generator().manual_seed(1)
    rows, S = {"prefill": (3, 6), "prefill_one_row": (1, 6), "decode": (4, 1)}[case]
    x = torch.randn(rows, S, gen.model.dim, generator=g)
    start = torch.tensor([0, 2, 5, 1][:rows]) if case != "prefill_one_row" else torch.tensor([0])
    pos = start[:, None] + torch.arange(S)[None]
    t_len = int(pos.max()) + 1
    mask = None if case == "prefill_one_row" else \
        (torch.arange(t_len)[None, None, :] <= pos[:, :, None])[:, None]
    outs, caches = [], []
    for fn in (stack._forward, transformer.forward):
        cache = stack.new_cache(rows + 1, 16, "cpu", torch.float32)
        cache[0].normal_(generator=torch.Generator().manual_seed(2))
        cache[1].normal_(generator=torch.Generator().manual_seed(3))
        outs.append(fn(x, pos, cache[0], cache[1], 1, rows + 1, pos, mask, t_len, stack.weights))
        caches.append(cache)
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(caches[0], caches[1]))
