"""Counter-based top-k / temperature sampling (`csm_worker.model.sampling`). All of it is deterministic, so the
statistical checks below cannot flake: they either hold for these seeds or the sampler changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csm_worker.model.sampling import SamplingParams, gumbel, sample, uniform


def params(rows, temperature=1.0, top_k=50, seed=0):
    as_list = lambda v: v if isinstance(v, (list, tuple)) else [v] * rows
    return SamplingParams.build(as_list(temperature), as_list(top_k), as_list(seed), device="cpu")


def test_uniform_is_open_interval_deterministic_and_keyed():
    n, width = 4096, 64
    seeds, counters = torch.full((n,), 7), torch.arange(n)
    u = uniform(seeds, counters, width)
    assert u.shape == (n, width) and u.dtype == torch.float64
    assert (u > 0).all() and (u < 1).all()
    assert torch.equal(u, uniform(seeds, counters, width))
    # A column's value does not depend on how many columns were asked for.
    assert torch.equal(u[:, :5], uniform(seeds, counters, 5))
    # Another seed, another counter, another column: other numbers.
    other_seed = uniform(torch.full((n,), 8), counters, width)
    assert (other_seed != u).float().mean() > 0.999
    shifted = uniform(seeds, counters + 1, width)
    assert (shifted[:-1] == u[1:]).all() and (shifted != u).float().mean() > 0.999
    assert (u[:, 0] != u[:, 1]).float().mean() > 0.999
    # Large and negative seeds (int64) work and differ from their low 32 bits alone.
    big = uniform(torch.tensor([2**40 + 7, -7]), torch.tensor([0, 0]), 8)
    assert (big > 0).all() and (big < 1).all() and not torch.equal(big[0], u[0, :8])
    # Roughly uniform: every decile holds about a tenth, and the mean is about a half.
    counts = torch.histc(u.float(), bins=10, min=0, max=1)
    assert (counts / u.numel() - 0.1).abs().max() < 0.005
    assert abs(u.mean().item() - 0.5) < 0.005
    # Neighbouring counters are not correlated.
    corr = np.corrcoef(u[:-1, 0].numpy(), u[1:, 0].numpy())[0, 1]
    assert abs(corr) < 0.05


def draw(logits: torch.Tensor, p: SamplingParams, counter: torch.Tensor) -> torch.Tensor:
    """One draw as the model makes it: Gumbel noise keyed by (seed, counter, rank), then sample()."""
    return sample(logits, p, None if p.all_greedy else gumbel(p.seed, counter, p.max_top_k))


def chi_square(choices: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(choices, minlength=len(probs)).double()
    expected = probs.double() * len(choices)
    support = expected > 0
    assert counts[~support].sum() == 0, "sampled a token outside the top-k"
    return float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())


@pytest.mark.parametrize("top_k,temperature", [(4, 0.7), (10, 1.0), (3, 1.5)])
def test_frequencies_follow_softmax_over_the_top_k(top_k, temperature):
    logits = torch.tensor([1.2, -0.3, 2.0, 0.5, 0.9, -2.0, 1.9, 0.0, -1.0, 0.7])
    n = 20_000
    order = logits.argsort(descending=True)
    probs = torch.zeros_like(logits)
    probs[order[:top_k]] = torch.softmax(logits[order[:top_k]] / temperature, dim=0)

    # One seed, many draw counters (as within a turn) ...
    by_counter = draw(logits.expand(n, -1), params(n, temperature, top_k, seed=11), torch.arange(n))
    # ... and many seeds at one counter (as across turns).
    by_seed = draw(logits.expand(n, -1), params(n, temperature, top_k, seed=list(range(n))),
                     torch.zeros(n, dtype=torch.long))
    # top_k - 1 degrees of freedom; 30 is far beyond the 0.1% point for 9 (27.9).
    assert chi_square(by_counter, probs) < 30
    assert chi_square(by_seed, probs) < 30


def test_top_k_one_rows_equal_argmax_in_a_mixed_batch():
    torch.manual_seed(0)
    logits = torch.randn(64, 2051)
    top_k = [1 if i % 3 == 0 else [2, 50, 2051][i % 3 - 1] for i in range(64)]
    out = draw(logits, params(64, temperature=[0.5 + (i % 5) / 2 for i in range(64)], top_k=top_k,
                                seed=list(range(64))), torch.arange(64))
    greedy_rows = torch.tensor([k == 1 for k in top_k])
    assert torch.equal(out[greedy_rows], logits.argmax(-1)[greedy_rows])
    assert not torch.equal(out[~greedy_rows], logits.argmax(-1)[~greedy_rows])
    all_greedy = params(64, top_k=1)
    assert all_greedy.all_greedy
    assert torch.equal(draw(logits, all_greedy, torch.arange(64)), logits.argmax(-1))


def test_rows_never_pick_outside_their_top_k():
    torch.manual_seed(1)
    rows, vocab = 512, 300
    logits = torch.randn(rows, vocab) * 3
    top_k = [[1, 2, 5, 50][i % 4] for i in range(rows)]
    for counter in range(8):
        out = draw(logits, params(rows, temperature=2.0, top_k=top_k, seed=list(range(rows))),
                     torch.full((rows,), counter))
        rank = (logits > logits.gather(1, out[:, None])).sum(dim=1)  # 0 = the best token
        assert (rank < torch.tensor(top_k)).all()
    # With a wide top-k and a high temperature, rows do use more than their best few tokens.
    wide = draw(logits, params(rows, temperature=5.0, top_k=50, seed=3), torch.arange(rows))
    wide_rank = (logits > logits.gather(1, wide[:, None])).sum(dim=1)
    assert wide_rank.max() >= 10 and (wide_rank < 50).all()


def test_a_rows_sample_does_not_depend_on_its_neighbours():
    torch.manual_seed(2)
    logits = torch.randn(6, 2051)
    p = dict(temperature=[0.9, 0.5, 1.2, 0.9, 0.7, 1.0], top_k=[50, 1, 7, 2051, 20, 50], seed=[5, 6, 7, 8, 9, 10])
    counter = torch.tensor([3, 1, 4, 1, 5, 9])
    together = draw(logits, params(6, **p), counter)
    for i in range(6):
        alone = draw(logits[i : i + 1], params(1, p["temperature"][i], p["top_k"][i], p["seed"][i]),
                       counter[i : i + 1])
        assert alone.item() == together[i].item(), f"row {i}"


def test_temperature_zero_is_greedy_or_rejected():
    torch.manual_seed(0)
    logits = torch.randn(8, 2051)
    try:
        out = draw(logits, params(8, temperature=0.0, top_k=50, seed=list(range(8))), torch.arange(8))
    except ValueError:
        return
    assert torch.equal(out, logits.argmax(-1))
