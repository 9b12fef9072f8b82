"""fp64 gradcheck of every normalizer, for its input and its learnable parameters."""

import pytest
import torch
from torch.autograd import gradcheck

from mmkit.normalizers import MultiMax, entmax_bisect

from .conftest import make


def _check(norm, x, mask=None):
    params = list(norm.parameters())
    names = [n for n, _ in norm.named_parameters()]

    def fn_functional(inp, *ps):
        return torch.func.functional_call(norm, dict(zip(names, ps)), (inp,), {"mask": mask})

    inputs = (x, *[p.detach().clone().requires_grad_() for p in params])
    assert gradcheck(fn_functional, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_input_and_parameters(any_variant):
    vid, name, kw = any_variant
    norm = make(name, kw)
    norm.train()
    shape = (2, 3, 3, 7) if kw.get("num_heads") else (3, 7)
    x = (torch.randn(*shape, dtype=torch.float64) * 2).requires_grad_()
    _check(norm, x)


def test_gradcheck_with_mask(any_variant):
    vid, name, kw = any_variant
    norm = make(name, kw)
    shape = (1, 3, 3, 6) if kw.get("num_heads") else (3, 3, 6)
    x = (torch.randn(*shape, dtype=torch.float64) * 2).requires_grad_()
    mask = torch.rand(*shape) > 0.3
    mask[..., 0, :] = False
    mask[..., 1, 0] = True
    _check(norm, x, mask)


@pytest.mark.parametrize("alpha", [1.2, 1.5, 1.8])
def test_entmax_alpha_gradient(alpha):
    x = torch.randn(4, 8, dtype=torch.float64).requires_grad_()
    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, a: entmax_bisect(x, a), (x, a), eps=1e-6, atol=1e-6)


def test_multimax_fused_large_rows_gradcheck():
    """Several chunks and the per-row parameter layout of the fused CPU path."""
    import mmkit.kernels.multimax_rows as cpu

    norm = MultiMax(num_heads=2).double()
    with torch.no_grad():
        norm.ranges.normal_(0, 0.5)
        norm.ts.normal_(0, 0.3)
    x = torch.randn(1, 2, 5, 9, dtype=torch.float64, requires_grad=True)
    old = cpu.CHUNK_ELEMS
    cpu.CHUNK_ELEMS = 18  # two rows per chunk -> five chunks
    try:
        _check(norm, x)
    finally:
        cpu.CHUNK_ELEMS = old
