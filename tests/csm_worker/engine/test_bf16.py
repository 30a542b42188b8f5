"""bf16, as CUDA runs it (portable backend, static step), on CPU: a mixed batch end to end, and teacher-forced
codebook-0 logits within a stated tolerance of float32.

The tolerance: bf16 keeps 8 bits of mantissa (a relative step of 2^-8 = 0.4%), and the backbone adds a
rounding per product and residual; measured on `random:tiny` over a 77-position turn (text and 40 frames), the
largest logit difference was 0.029 of the float32 logits' standard deviation and 98.7% of positions kept their
argmax. The bounds below are about twice that, so a real loss of precision (a float32 statistic computed in bf16,
a cache kept at lower precision) fails them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_worker import ConversationRequest, Generator, TurnRequest
from csm_worker.engine.engine import Engine
from csm_worker.model.prompt import TextEncoder

MAX_DIFF_OF_STD = 0.06
ARGMAX_AGREEMENT = 0.95
MEAN_TOTAL_VARIATION = 0.002  # between the softmaxes, averaged over positions (measured 0.0005)


@pytest.fixture(scope="module")
def bf16(gen):
    return Generator(gen.loaded, "cpu", torch.bfloat16, backend="portable")


def test_portable_bf16_renders_a_mixed_batch_end_to_end(bf16, mixed, collect):
    convs = mixed()
    for conv in convs[::2]:  # half the conversations sample, as jobs do
        for turn in conv.turns:
            turn.top_k, turn.seed = 50, 7 + turn.turn_index
    engine = Engine(bf16.model, bf16.codec, bf16.loaded.tokenizer, batch_size=3, static=True)
    assert engine.caches["backbone"][0].dtype == torch.bfloat16 and engine.h.dtype == torch.bfloat16
    turns, dones, _ = collect(engine.run(convs))
    assert all(d.error is None for d in dones.values())
    assert len(turns) == sum(len(c.turns) for c in convs)
    for (cid, i), turn in turns.items():
        frames = next(c for c in convs if c.conversation_id == cid).turns[i].max_frames
        assert turn.codes.shape == (32, frames) and 0 <= turn.codes.min() and turn.codes.max() < 2051
        assert turn.audio.dtype == np.float32 and len(turn.audio) == frames * 1920 and np.isfinite(turn.audio).all()
    assert next(bf16.codec.mimi.parameters()).dtype == torch.float32  # Mimi stays float32


def teacher_forced_logits(model, tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Codebook-0 logits [S, vocab] (float32) at every position of text `tokens` followed by frames `codes`."""
    x = torch.cat([model.embed_text(tokens), model.embed_frames(codes)])[None]
    pos = torch.arange(x.shape[1], device=x.device)[None]
    caches = model.new_caches(1)
    with torch.no_grad():
        h = model.backbone.forward(x, pos, caches["backbone"], slice(0, 1), pos, None, x.shape[1])
        return model.c0_head(h[0]).float()


def test_teacher_forced_codebook0_logits_stay_close_to_float32(gen, bf16):
    tokens = torch.tensor(TextEncoder(gen.loaded.tokenizer).encode(0, "Teacher forcing of a whole turn."))
    codes = torch.randint(0, 2048, (40, 32), generator=torch.Generator().manual_seed(0))
    want = teacher_forced_logits(gen.model, tokens, codes)
    got = teacher_forced_logits(bf16.model, tokens, codes)
    assert bf16.model.c0_head.weight.dtype == torch.bfloat16
    diff = (got - want).abs()
    assert diff.max() <= MAX_DIFF_OF_STD * want.std(), (diff.max(), want.std())
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= ARGMAX_AGREEMENT
    tv = 0.5 * (got.softmax(-1) - want.softmax(-1)).abs().sum(-1).mean()
    assert tv <= MEAN_TOTAL_VARIATION, tv
    assert diff.max() > 0, "bf16 gave float32's logits exactly: the model did not run in bf16"
