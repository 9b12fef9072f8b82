"""Parity with the reference implementations: the entmax package and the official SegLU."""

import entmax as ref
import pytest
import torch

from mmkit.normalizers import (
    Entmax,
    Entmax15,
    MultiMax,
    SoftMax,
    SparseMax,
    entmax15,
    entmax_bisect,
    seglu,
    sparsemax,
)


def _fwd_bwd(fn, x, g):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("shape,dim", [((7, 40), -1), ((3, 50, 4), 1), ((2, 3, 300), -1)])
@pytest.mark.parametrize(
    "ours,theirs",
    [
        (sparsemax, lambda x, dim: ref.sparsemax(x, dim)),
        (entmax15, lambda x, dim: ref.entmax15(x, dim)),
        (lambda x, dim: entmax_bisect(x, 1.5, dim=dim), lambda x, dim: ref.entmax_bisect(x, 1.5, dim)),
        (lambda x, dim: entmax_bisect(x, 1.25, dim=dim), lambda x, dim: ref.entmax_bisect(x, 1.25, dim)),
        (lambda x, dim: entmax_bisect(x, 1.75, dim=dim), lambda x, dim: ref.entmax_bisect(x, 1.75, dim)),
    ],
    ids=["sparsemax", "entmax15", "bisect1.5", "bisect1.25", "bisect1.75"],
)
def test_parity_with_entmax_package(ours, theirs, shape, dim):
    # Scale 3 makes supports of a few dozen entries at N=300: wider than the first topk.
    x = torch.randn(*shape, dtype=torch.float64) * 3
    x[0].mul_(0.01)  # near-uniform rows: support is the whole row
    g = torch.randn(*shape, dtype=torch.float64)
    y1, g1 = _fwd_bwd(lambda t: ours(t, dim=dim), x, g)
    y2, g2 = _fwd_bwd(lambda t: theirs(t, dim), x, g)
    assert (y1 - y2).abs().max() <= 1e-6
    assert (g1 - g2).abs().max() <= 1e-6


def test_bisect_equals_exact_entmax15():
    x = torch.randn(20, 64, dtype=torch.float64) * 4
    g = torch.randn(20, 64, dtype=torch.float64)
    y1, g1 = _fwd_bwd(lambda t: entmax_bisect(t, 1.5), x, g)
    y2, g2 = _fwd_bwd(entmax15, x, g)
    assert (y1 - y2).abs().max() <= 1e-10 and (g1 - g2).abs().max() <= 1e-10


def test_bisect_alpha2_is_sparsemax_and_alpha_grad_matches_package():
    x = torch.randn(6, 30, dtype=torch.float64) * 2
    assert torch.allclose(entmax_bisect(x, 2.0), sparsemax(x), atol=1e-10)
    g = torch.randn(6, 30, dtype=torch.float64)
    a1 = torch.tensor(1.35, dtype=torch.float64, requires_grad=True)
    a2 = torch.tensor(1.35, dtype=torch.float64, requires_grad=True)
    (entmax_bisect(x, a1) * g).sum().backward()
    (ref.entmax_bisect(x, a2, -1, n_iter=80) * g).sum().backward()
    assert torch.allclose(a1.grad, a2.grad, atol=1e-6)


def test_modules_match_functions():
    x = torch.randn(4, 5, 9)
    assert torch.equal(SparseMax()(x), sparsemax(x))
    assert torch.equal(Entmax15()(x), entmax15(x))
    assert torch.allclose(Entmax(alpha=1.5)(x), entmax15(x), atol=1e-6)


def official_multimax(x, ranges, ts):
    """The formula of the official code, written out (order 2)."""
    r0, r1, r2, r3 = ranges
    t0, t1, t2, t3 = ts
    relu = torch.relu
    y = x + t0 * relu(r0 - x) + t1 * relu(x - r1) + t2 * relu(r2 - x) ** 2 + t3 * relu(x - r3) ** 2
    return torch.softmax(y, -1)


@pytest.mark.parametrize("fused", [True, False])
def test_multimax_matches_official_formula(fused):
    norm = MultiMax(fused=fused).double()
    with torch.no_grad():
        norm.ranges.copy_(torch.tensor([-0.5, 1.0, -1.5, 2.0]))
        norm.ts.copy_(torch.tensor([-0.4, -0.3, 0.2, -0.1]))
    x = torch.randn(3, 4, 33, dtype=torch.float64) * 3
    g = torch.randn_like(x)
    y1, g1 = _fwd_bwd(norm, x, g)
    params = [p.detach().clone().requires_grad_() for p in (norm.ranges, norm.ts)]
    y2, g2 = _fwd_bwd(lambda t: official_multimax(t, *params), x, g)
    assert (y1 - y2).abs().max() <= 1e-12 and (g1 - g2).abs().max() <= 1e-12
    for ours, theirs in zip((norm.ranges.grad, norm.ts.grad), params):
        assert torch.allclose(ours, theirs.grad, atol=1e-10)


def test_multimax_fused_equals_reference_with_masks_and_heads():
    torch.manual_seed(1)
    fused, plain = MultiMax(num_heads=4).double(), MultiMax(num_heads=4, fused=False).double()
    with torch.no_grad():
        fused.ranges.normal_(0, 1)
        fused.ts.normal_(0, 0.3)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64) * 2
    mask = torch.ones(16, 16, dtype=torch.bool).tril()  # causal
    g = torch.randn_like(x)
    y1, g1 = _fwd_bwd(lambda t: fused(t, mask=mask), x, g)
    y2, g2 = _fwd_bwd(lambda t: plain(t, mask=mask), x, g)
    assert torch.allclose(y1, y2, atol=1e-12) and torch.allclose(g1, g2, atol=1e-12)
    for a, b in zip(fused.parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-10)


def test_multimax_zero_parameters_is_softmax():
    norm = MultiMax(init_std=0.0)
    x = torch.randn(5, 17) * 4
    assert torch.allclose(norm(x), torch.softmax(x, -1), atol=1e-6)
    assert torch.allclose(norm.modulate(x), x)


def test_seglu_matches_paper_definition_at_order_3():
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    r = torch.tensor([-1.0, 1.0, -2.0, 2.0, -3.0, 3.0], dtype=torch.float64)
    t = torch.tensor([0.1, -0.2, 0.3, -0.4, 0.05, -0.06], dtype=torch.float64)
    expected = x.clone()
    for n in range(3):
        expected += t[2 * n] * (r[2 * n] - x).clamp_min(0) ** (n + 1)
        expected += t[2 * n + 1] * (x - r[2 * n + 1]).clamp_min(0) ** (n + 1)
    assert torch.allclose(seglu(x, r, t), expected)


def test_softmax_temperature():
    x = torch.randn(3, 8)
    assert torch.allclose(SoftMax(temperature=2.0)(x), torch.softmax(x / 2, -1))
    learn = SoftMax(temperature=2.0, learnable=True)
    assert torch.allclose(learn(x), torch.softmax(x / 2, -1), atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        SoftMax(temperature=0.0)
