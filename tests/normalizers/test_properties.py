"""Properties every normalizer must have, looped over the registry."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmkit.normalizers import NORMALIZERS, build_normalizer

from .conftest import HEADED, make

rows = st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=1, max_size=24)


def _scores(shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype) * 3


@pytest.mark.parametrize("name", list(NORMALIZERS))
@settings(max_examples=40, deadline=None)
@given(values=rows)
def test_simplex_on_random_rows(name, values):
    norm = build_normalizer(name).double()
    p = norm(torch.tensor(values, dtype=torch.float64))
    assert torch.isfinite(p).all()
    assert (p >= 0).all()
    assert torch.allclose(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -2])
def test_simplex_along_any_dim(variant, dim):
    _, name, kw = variant
    norm = make(name, kw)
    x = _scores((4, 5, 6))
    p = norm(x, dim=dim)
    assert p.shape == x.shape
    assert (p >= 0).all()
    assert torch.allclose(p.sum(dim), torch.ones(()).double(), atol=1e-9)
    # Same as moving that dim last, normalizing, and moving it back.
    ref = norm(x.movedim(dim, -1)).movedim(-1, dim)
    assert torch.allclose(p, ref, atol=1e-12)


def test_bad_dim_and_mask_are_clear_errors(variant):
    _, name, kw = variant
    norm = make(name, kw)
    x = _scores((2, 5))
    with pytest.raises(ValueError, match="out of range"):
        norm(x, dim=2)
    with pytest.raises(ValueError, match="bool"):
        norm(x, mask=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="broadcast"):
        norm(x, mask=torch.ones(3, 5, dtype=torch.bool))


@pytest.mark.parametrize("how", ["mask", "neginf"])
def test_masked_equals_truncated(any_variant, how):
    _, name, kw = any_variant
    norm = make(name, kw)
    x = _scores((2, 3, 5, 7))  # [B, H, Nq, Nk]
    keep = torch.ones(7, dtype=torch.bool)
    keep[[1, 4, 5]] = False
    if how == "mask":
        p = norm(x, mask=keep)
    else:
        p = norm(x.masked_fill(~keep, float("-inf")))
    assert (p[..., ~keep] == 0).all()
    assert torch.allclose(p[..., keep], norm(x[..., keep]), atol=1e-12)


def test_fully_masked_rows_are_zero_without_nan(any_variant):
    _, name, kw = any_variant
    norm = make(name, kw)
    x = _scores((2, 3, 4, 6)).requires_grad_()
    mask = torch.rand(2, 3, 4, 6) > 0.4
    mask[:, :, 0] = False  # query 0 sees nothing
    mask[..., 1, :] = True
    p = norm(x, mask=mask)
    assert torch.isfinite(p).all()
    assert (p[:, :, 0] == 0).all()
    assert torch.allclose(p[:, :, 1].sum(-1), torch.ones(()).double())
    p.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[:, :, 0] == 0).all()
    assert (x.grad[~mask] == 0).all()
    for param in norm.parameters():
        assert torch.isfinite(param.grad).all()
    # A row that is all -inf (no mask given) behaves the same.
    y = torch.full((3, 4, 6), float("-inf"), dtype=torch.float64)
    y[:, 1] = 0.5
    q = norm(y)
    assert (q[:, 0] == 0).all() and torch.isfinite(q).all()


@pytest.mark.parametrize("big", [1e4, -1e4])
def test_extreme_logits(variant, big):
    _, name, kw = variant
    norm = make(name, kw, dtype=torch.float32, scale=0.02)
    x = torch.randn(4, 9).requires_grad_()
    with torch.no_grad():
        x[:, 0] = big
        x[:, 3] = -big
    p = norm(x)
    assert torch.isfinite(p).all()
    assert torch.allclose(p.sum(-1), torch.ones(4), atol=1e-5)
    p[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(any_variant, dtype):
    _, name, kw = any_variant
    norm = make(name, kw, dtype=torch.float32, scale=0.05)
    x32 = torch.randn(2, 3, 5, 33) * 4
    x32[0, 0, 0, 0] = 3e3
    x = x32.to(dtype).requires_grad_()
    p = norm(x)
    assert p.dtype == dtype
    assert torch.isfinite(p).all()
    ref = norm(x.detach().float())
    assert torch.allclose(p.float(), ref, atol=2e-2)
    p.float().pow(2).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


def test_bf16_autocast(variant):
    _, name, kw = variant
    norm = make(name, kw, dtype=torch.float32, scale=0.05)
    x = torch.randn(3, 8, 16)
    w = torch.randn(16, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = x @ w  # bf16 under autocast
        p = norm(scores)
    assert p.dtype == scores.dtype
    assert torch.isfinite(p.float()).all()
    p.float().sum().backward()
    assert torch.isfinite(w.grad).all()


def test_every_parameter_gets_a_gradient(any_variant):
    _, name, kw = any_variant
    norm = make(name, kw)
    x = _scores((2, 3, 4, 6)).requires_grad_()
    norm(x).pow(3).sum().backward()
    assert x.grad.abs().sum() > 0
    for pname, param in norm.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
    assert {id(p) for p in norm.no_decay_parameters()} == {id(p) for p in norm.parameters()}


@pytest.mark.parametrize("vid,name,kw", HEADED, ids=[h[0] for h in HEADED])
def test_per_head_equals_separate_normalizers(vid, name, kw):
    norm = make(name, kw)
    x = _scores((2, 3, 4, 6))
    p = norm(x)
    for h in range(3):
        single = build_normalizer(name, **{**kw, "num_heads": None}).double()
        with torch.no_grad():
            for (_, ps), (_, pm) in zip(single.named_parameters(), norm.named_parameters()):
                ps.copy_(pm[h])
        assert torch.allclose(p[:, h], single(x[:, h]), atol=1e-12)
    with pytest.raises(ValueError, match="per-head"):
        norm(_scores((2, 4, 4, 6)))


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 6)])
def test_to_rows_flattens_every_dim_and_back_restores_it(shape):
    from mmkit.kernels.rows import to_rows

    x = torch.randn(*shape)
    for dim in range(-len(shape), len(shape)):
        rows, back = to_rows(x, dim)
        expected = x.movedim(dim, -1).reshape(-1, shape[dim])  # [M, N]
        assert torch.equal(rows, expected), (shape, dim)
        assert torch.equal(back(rows * 2), x * 2), (shape, dim)
