"""`csm_worker.backends.linear.Linear`: products with a fixed weight, through oneDNN on CPU (prepacked) or F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from csm_worker.backends.linear import Linear, onednn_available

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def weights(out=96, inp=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g), torch.randn(70, inp, generator=g)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 64, 70])
def test_onednn_product_is_float32_close_to_f_linear(rows):
    w, x = weights()
    lin = Linear(w)
    assert lin.packed is not None and lin.out_features == 96
    got = lin(x[:rows])
    assert got.shape == (rows, 96) and got.dtype == torch.float32
    # Same IEEE float32 arithmetic, another summation order: differences at the rounding level only.
    torch.testing.assert_close(got, F.linear(x[:rows], w), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_product_takes_leading_dims_and_rows_do_not_depend_on_neighbours():
    w, x = weights()
    lin = Linear(w)
    flat = lin(x[:60])
    assert torch.equal(lin(x[:60].view(6, 10, 64)), flat.view(6, 10, 96))
    # A row's result is the same whichever other rows (two or more) share the call.
    assert torch.equal(lin(x[7:40]), flat[7:40])


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "f_linear"])
def test_add_is_the_residual_plus_the_product(onednn):
    if onednn and not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    w, x = weights(out=64)
    lin = Linear(w, use_onednn=onednn)
    residual = torch.randn(70, 64)
    assert torch.equal(lin.add(residual, x), residual + lin(x))
    assert torch.equal(lin.add(residual.view(7, 10, 64), x.view(7, 10, 64)), (residual + lin(x)).view(7, 10, 64))


def test_without_onednn_it_is_exactly_f_linear():
    w, x = weights()
    lin = Linear(w, use_onednn=False)
    assert lin.packed is None
    assert torch.equal(lin(x), F.linear(x, w))
    assert not onednn_available(torch.device("meta"), torch.float32)
    assert not onednn_available(torch.device("cpu"), torch.float64)
