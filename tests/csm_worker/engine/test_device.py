"""Parity on the devices named in $CSM_RENDER_TEST_DEVICES (comma-separated; default `cpu`). CI runs them on
CPU; scripts/gpu_check.sh sets `cuda`, so the same tests check the GPU path (portable backend, static step, CUDA
graphs) against transformers on the GPU, and bf16 on the GPU against float32 on the CPU.

Modes: `dynamic` (the step sized from Python state), `static` (static_step.py, eager), `graphs` (its CUDA
graphs). On CPU `graphs` falls back to `static` (test_static_step.py) and `dynamic` is test_parity.py, so CPU
runs `static` here only: the fixed-shape step against transformers directly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from csm_worker import Generator, load_csm_1b
from csm_worker.engine.engine import Engine

from ..conftest import collect, hf_greedy_on, sampled_mix_conversations
from .test_bf16 import ARGMAX_AGREEMENT, MAX_DIFF_OF_STD, teacher_forced_logits

DEVICES = [d.strip() for d in os.environ.get("CSM_RENDER_TEST_DEVICES", "cpu").split(",") if d.strip()]
GPU_DEVICES = [d for d in DEVICES if d != "cpu"]


def modes(device: str) -> list[str]:
    return ["static"] if device == "cpu" else ["dynamic", "static", "graphs"]


CASES = [(d, m) for d in DEVICES for m in modes(d)]


@pytest.fixture(scope="module")
def dgen(request, gen):
    """random:tiny in float32 on the device, on the portable backend (what CUDA runs)."""
    if request.param == "cpu":
        return Generator(gen.loaded, "cpu", torch.float32, backend="portable")
    return load_csm_1b(request.param, "random:tiny", "float32")


def engine_for(dgen, mode: str, batch_size: int) -> Engine:
    return Engine(dgen.model, dgen.codec, dgen.loaded.tokenizer, batch_size=batch_size, decode_audio=False,
                  static=mode != "dynamic", graphs=mode == "graphs")


def render_on(dgen, mode: str, conversations, batch_size: int = 3):
    engine = engine_for(dgen, mode, batch_size)
    turns, dones, _ = collect(engine.run(conversations))
    assert all(d.error is None for d in dones.values())
    if mode == "graphs" and dgen.model.device.type == "cuda":
        runner = engine.static.run_fn
        assert runner.enabled and runner.graphs, "no CUDA graph was captured: the graphs mode tested nothing"
    return {k: t.codes for k, t in turns.items()}


@pytest.mark.parametrize("dgen,mode", CASES, indirect=["dgen"])
def test_mixed_batch_equals_transformers_on_the_device(dgen, mode, mixed, mixed_spec, text_ids):
    device = dgen.device
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 parity needs float32 products
    got = render_on(dgen, mode, mixed())
    reference = hf_greedy_on(dgen.loaded.hf, text_ids)
    for cid, spec in mixed_spec.items():
        context = []
        for i, (speaker, text, frames) in enumerate(spec):
            np.testing.assert_array_equal(got[(cid, i)], reference(context, speaker, text, frames),
                                          err_msg=f"{device} {mode}: {cid} turn {i}")
            context.append((speaker, text, got[(cid, i)]))


@pytest.mark.parametrize("dgen,mode", [(d, m) for d, m in CASES if m != "dynamic" and d != "cpu"],
                         indirect=["dgen"])
def test_sampled_codes_equal_the_dynamic_step_on_the_device(dgen, mode):
    device = dgen.device
    want = render_on(dgen, "dynamic", sampled_mix_conversations())
    got = render_on(dgen, mode, sampled_mix_conversations())
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"{device} {mode}: {key}")


@pytest.mark.parametrize("device", GPU_DEVICES)
def test_bf16_on_the_device_stays_close_to_float32_on_the_cpu(gen, device):
    bf16 = Generator(gen.loaded, device, torch.bfloat16)  # the GPU's default: portable backend, bf16
    assert bf16.model.backend.name == "portable"
    from csm_worker.model.prompt import TextEncoder

    tokens = torch.tensor(TextEncoder(gen.loaded.tokenizer).encode(0, "Teacher forcing of a whole turn."))
    codes = torch.randint(0, 2048, (40, 32), generator=torch.Generator().manual_seed(0))
    want = teacher_forced_logits(gen.model, tokens, codes)
    got = teacher_forced_logits(bf16.model, tokens.to(device), codes.to(device)).cpu()
    assert (got - want).abs().max() <= MAX_DIFF_OF_STD * want.std()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= ARGMAX_AGREEMENT
