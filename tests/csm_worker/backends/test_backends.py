"""The backend seam (`csm_worker.backends`): chosen automatically, forcible, and each model part follows it."""

from __future__ import annotations

import pytest
import torch

from csm_worker import ModelLoadError, backends, load_csm_1b
from csm_worker.engine.engine import Engine


def test_auto_picks_cpu_on_cpu_and_portable_elsewhere(monkeypatch):
    monkeypatch.delenv(backends.ENV, raising=False)
    assert backends.resolve("cpu").name == "cpu"
    assert backends.resolve("cuda:0").name == "portable"
    assert backends.resolve("meta", "auto").name == "portable"


def test_the_argument_beats_the_environment_which_beats_auto(monkeypatch):
    monkeypatch.setenv(backends.ENV, "portable")
    assert backends.resolve("cpu").name == "portable"
    assert backends.resolve("cpu", "cpu").name == "cpu"
    monkeypatch.setenv(backends.ENV, " CPU ")
    assert backends.resolve("cpu").name == "cpu"


def test_bad_choices_say_what_to_choose(monkeypatch):
    with pytest.raises(backends.BackendError, match="choose one of auto, cpu, portable"):
        backends.resolve("cpu", "tpu")
    monkeypatch.setenv(backends.ENV, "fast")
    with pytest.raises(ModelLoadError, match="CSM_RENDER_BACKEND"):
        backends.resolve("cpu")
    with pytest.raises(backends.BackendError, match="only on the CPU"):
        backends.resolve("cuda", "cpu")
    # load_csm_1b refuses before loading anything (a bad name costs no model load).
    with pytest.raises(backends.BackendError):
        load_csm_1b("cpu", "random:does-not-exist", backend="fast")


def test_each_part_of_the_model_follows_its_backend(gen, bgen):
    m = bgen.model
    cpu = m.backend.name == "cpu"
    assert bgen.model.backend.name == ("cpu" if bgen is gen else "portable")
    products = [m.c0_head, m.dd_proj, *m.dd_heads, *(getattr(layer, name) for layer in m.backbone.layers
                                                    for name in ("wqkv", "wo", "w_gate_up", "w_down"))]
    assert {p.onednn for p in products} == {cpu and torch.backends.mkldnn.is_available()}
    assert isinstance(m.codebooks, torch.jit.ScriptFunction) == cpu
    assert isinstance(m.backbone._forward, torch.jit.ScriptFunction) == cpu
    assert m.depth_weights.native_topk == cpu
    engine = Engine(m, bgen.codec, bgen.loaded.tokenizer, batch_size=2, decode_audio=False)
    assert engine.split.workers == (torch.get_num_threads() if cpu else 0)


def test_the_portable_backend_never_calls_the_cpu_top_k(bgen, mixed, collect, monkeypatch):
    """torch.ops.csm_render.top_k is the cpu backend's; a CUDA graph of the portable path must not need it."""
    calls = []
    from csm_worker.backends.cpu import topk

    real = topk.top_k
    monkeypatch.setattr(topk, "top_k", lambda x, k: calls.append(k) or real(x, k))
    sampled = [c for c in mixed()[:2]]
    for conv in sampled:
        for turn in conv.turns:
            turn.top_k = 50
    collect(Engine(bgen.model, bgen.codec, bgen.loaded.tokenizer, batch_size=2, decode_audio=False).run(sampled))
    assert bool(calls) == (bgen.model.backend.name == "cpu")
