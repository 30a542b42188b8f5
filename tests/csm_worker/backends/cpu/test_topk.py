"""The sampler's top-k (`csm_worker.backends.cpu.topk`, `csm_worker.backends.cpu.native_topk`): exact, like
torch.topk, on every path."""

from __future__ import annotations

import pytest
import torch

from csm_worker.backends.cpu import native_topk, topk
from csm_worker.model.sampling import SamplingParams, gumbel, sample


@pytest.fixture(scope="module")
def lib(cache_dir):
    lib = native_topk.load()
    if lib is None:
        pytest.skip("no C compiler here: the native top-k is not built")
    return lib


def paths(lib):
    return {
        "native": lambda x, k: native_topk.top_k(lib, x, k, 2 * k),
        "native_many_groups": lambda x, k: native_topk.top_k(lib, x, k, x.shape[1] // 8),
        "grouped": topk.grouped,
        "dispatch": topk.top_k,
    }


def assert_same_top_k(x, v, i, k, name):
    """torch.topk's values in its order, each at its returned index, every index once; where a value is not
    tied within its row, the very index torch.topk gives (tied values may come in another order)."""
    want_v, want_i = x.topk(k, dim=-1)
    assert torch.equal(v, want_v), name
    assert torch.equal(x.gather(1, i), v), name
    assert all(len(set(row.tolist())) == k for row in i), name
    untied = (x[:, None, :] == want_v[:, :, None]).sum(-1) == 1  # [B, k]
    assert untied.float().mean() > 0.5 or k == 1, "the data should be mostly untied"
    assert torch.equal(i[untied], want_i[untied]), name


@pytest.mark.parametrize("k", [1, 2, 50, 100, 128])
def test_every_path_equals_torch_topk_on_random_logits(lib, k):
    g = torch.Generator().manual_seed(k)
    for scale in (0.01, 1.0, 30.0):
        x = torch.randn(37, 2051, generator=g) * scale
        for name, fn in paths(lib).items():
            v, i = fn(x, k)
            assert_same_top_k(x, v, i, k, (name, scale))


def test_native_reads_rows_of_a_wider_tensor(lib):
    wide = torch.randn(9, 2100)
    x = wide[:, 20:2071]  # row stride 2100, unit column stride
    v, i = native_topk.top_k(lib, x, 50, 100)
    want_v, want_i = x.topk(50, dim=-1)
    assert torch.equal(v, want_v) and torch.equal(i, want_i)


def test_ties_keep_a_true_top_k_and_native_puts_lower_indices_first(lib):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 12, (16, 2051), generator=g).float()  # every value repeats ~170 times
    x[0] = 5.0  # a row of one value
    x[1] = float("-inf")
    x[2, 1000] = float("-inf")
    for name, fn in paths(lib).items():
        v, i = fn(x, 50)
        assert torch.equal(v, x.topk(50).values), name  # the same values ...
        assert torch.equal(x.gather(1, i), v), name  # ... at the returned indices ...
        assert all(len(set(row.tolist())) == 50 for row in i), name  # ... each index once
    v, i = native_topk.top_k(lib, x, 50, 100)
    # Canonical order: by value, then by index.
    assert ((v[:, :-1] > v[:, 1:]) | ((v[:, :-1] == v[:, 1:]) & (i[:, :-1] < i[:, 1:]))).all()
    assert i[0].tolist() == list(range(50)) and i[1].tolist() == list(range(50))


def test_small_widths_and_other_devices_go_to_torch(lib, monkeypatch):
    calls = []
    monkeypatch.setattr(native_topk, "top_k", lambda *a: calls.append(a))
    x = torch.randn(4, 300)
    v, i = topk.top_k(x, 50)  # 300 < 2 * 50 * 8: nothing to gain
    assert torch.equal(i, x.topk(50).indices) and not calls
    topk.top_k(x.double(), 5)
    assert not calls


def test_without_native_the_grouped_path_serves(monkeypatch):
    monkeypatch.setattr(native_topk, "load", lambda: None)
    seen = []
    monkeypatch.setattr(topk, "grouped", lambda x, k: seen.append(k) or x.topk(k))
    topk.top_k(torch.randn(3, 2051), 50)
    assert seen == [50]


def test_native_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("CSM_RENDER_NATIVE", "0")
    monkeypatch.setattr(native_topk, "_tried", False)
    monkeypatch.setattr(native_topk, "_lib", None)
    assert native_topk.load() is None


def test_a_failed_build_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native_topk, "_tried", False)
    monkeypatch.setattr(native_topk, "_lib", None)
    assert native_topk.load() is None
    assert "native top-k unavailable" in caplog.text
    assert not list(tmp_path.glob("native/*.so"))


def test_the_kernel_is_built_once_into_the_cache(lib, cache_dir):
    built = list((cache_dir / "native").glob("csm_topk_*.so"))
    assert len(built) == 1 and built[0].stat().st_size > 0


def test_draws_equal_those_of_torch_topk(lib, monkeypatch):
    """The sampler with the fast top-k makes exactly the draws it made with torch.topk."""
    g = torch.Generator().manual_seed(11)
    rows = 64
    p = SamplingParams.build([0.5 + (r % 4) / 4 for r in range(rows)], [50] * rows, list(range(rows)), "cpu")
    mixed = SamplingParams.build([0.9] * rows, [[1, 7, 50][r % 3] for r in range(rows)], list(range(rows)), "cpu")
    for params in (p, mixed):
        draws = {}
        for name, fn in {"fast": topk.top_k, "torch": lambda x, k: x.topk(k, dim=-1)}.items():
            monkeypatch.setattr(topk, "top_k", fn)  # what torch.ops.csm_render.top_k calls
            g.manual_seed(11)
            draws[name] = [sample(torch.randn(rows, 2051, generator=g), params,
                                  gumbel(params.seed, torch.full((rows,), c), params.max_top_k))
                           for c in range(20)]
        for a, b in zip(draws["fast"], draws["torch"]):
            assert torch.equal(a, b)


def test_native_skips_nans_and_pads_a_row_with_too_few_values(lib):
    x = torch.randn(3, 2051)
    x[0, ::2] = float("nan")  # half the row: NaNs never enter the top-k
    x[1, 30:] = float("nan")  # 30 values left for k = 50
    v, i = native_topk.top_k(lib, x, 50, 100)
    clean = torch.nan_to_num(x[0], nan=float("-inf"))
    assert torch.equal(v[0], clean.topk(50).values) and torch.equal(i[0], clean.topk(50).indices)
    assert torch.equal(v[1, :30], x[1, :30].topk(30).values)
    assert torch.equal(v[1, 30:], torch.full((20,), float("-inf"))) and torch.equal(i[1, 30:], torch.zeros(20).long())
