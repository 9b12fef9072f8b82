"""Each normalizer's output-layer loss: CE on σ(logits) or the Fenchel-Young loss."""

import entmax as ref
import pytest
import torch
import torch.nn.functional as F

from mmkit.normalizers import NORMALIZERS, Entmax, MultiMax, build_normalizer, seglu

from .conftest import VARIANTS, make

SPARSE = {"sparsemax": ref.SparsemaxLoss, "entmax15": ref.Entmax15Loss}


@pytest.mark.parametrize("name", list(SPARSE))
def test_fenchel_young_matches_entmax_package(name):
    z = torch.randn(10, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (10,))
    y[3] = -100
    ours = build_normalizer(name).loss(z, y)
    keep = y != -100  # the package crashes on ignored rows, so drop them for it
    theirs = SPARSE[name](reduction="sum")(z[keep], y[keep]) / 9
    assert torch.allclose(ours, theirs, atol=1e-10)
    g1, = torch.autograd.grad(ours, z)
    g2, = torch.autograd.grad(theirs, z)
    assert torch.allclose(g1, g2, atol=1e-10)


def test_entmax_bisect_loss_matches_package():
    z = torch.randn(6, 9, dtype=torch.float64)
    y = torch.randint(0, 9, (6,))
    ours = Entmax(alpha=1.3).loss(z, y, reduction="sum")
    theirs = ref.EntmaxBisectLoss(alpha=1.3, n_iter=80, reduction="sum")(z, y)
    assert torch.allclose(ours, theirs, atol=1e-8)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_loss_properties(variant, smoothing):
    """Non-negative FY/CE losses whose logit gradient is p - y for the FY ones."""
    _, name, kw = variant
    norm = make(name, kw)
    z = (torch.randn(8, 6, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 6, (8,))
    loss = norm.loss(z, y, label_smoothing=smoothing, reduction="none")
    assert loss.shape == (8,) and torch.isfinite(loss).all() and (loss >= -1e-12).all()
    loss.sum().backward()
    if name in ("sparsemax", "entmax15", "entmax"):
        target = F.one_hot(y, 6).double() * (1 - smoothing) + smoothing / 6
        with torch.no_grad():
            p = norm(z)
        assert torch.allclose(z.grad, p - target, atol=1e-10)


def test_fenchel_young_is_zero_at_its_target():
    z = torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64)
    for name in ("sparsemax", "entmax15", "entmax"):
        assert build_normalizer(name).loss(z, torch.tensor([0])).abs() < 1e-12


def test_ignore_index_and_shapes():
    for name in NORMALIZERS:
        norm = build_normalizer(name).double()
        z = torch.randn(2, 5, 4, dtype=torch.float64)
        y = torch.randint(0, 4, (2, 5))
        y[0, :3] = -1
        full = norm.loss(z, y, ignore_index=-1, reduction="none")
        assert full.shape == (2, 5) and (full[0, :3] == 0).all()
        mean = norm.loss(z, y, ignore_index=-1)
        assert torch.allclose(mean, full.sum() / 7)
        with pytest.raises(ValueError, match="target shape"):
            norm.loss(z, y[:, :2])
        with pytest.raises(ValueError, match="reduction"):
            norm.loss(z, y, reduction="avg")


def test_multimax_loss_is_ce_on_modulated_logits():
    norm = make("multimax", {})
    z = torch.randn(5, 11, dtype=torch.float64)
    y = torch.randint(0, 11, (5,))
    expected = F.cross_entropy(seglu(z, norm.ranges.view(-1, 1, 1), norm.ts.view(-1, 1, 1)), y,
                               label_smoothing=0.1)
    assert torch.allclose(norm.loss(z, y, label_smoothing=0.1), expected)


def test_learnable_alpha_loss_gradient_is_finite_and_nonzero():
    norm = Entmax(alpha=1.4, learnable=True).double()
    z = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (7,))
    norm.loss(z, y, label_smoothing=0.1).backward()
    assert torch.isfinite(norm.alpha_logit.grad).all() and norm.alpha_logit.grad.abs() > 0


def test_per_head_normalizers_refuse_output_loss():
    for norm in (MultiMax(num_heads=2), Entmax(alpha=1.5, learnable=True, num_heads=2)):
        with pytest.raises(ValueError, match="per-head"):
            norm.loss(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))


def test_variant_ids_are_unique():
    assert len({v[0] for v in VARIANTS}) == len(VARIANTS)


def test_probability_targets_equal_index_targets_when_one_hot(variant):
    """MixUp/CutMix give class probabilities; a one-hot one must equal the index target,
    and a mixture must be the same mixture of the per-class losses for CE, or have the
    FY gradient p - y."""
    _, name, kw = variant
    norm = make(name, kw)
    z = torch.randn(5, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    hard = norm.loss(z, y, label_smoothing=0.1, reduction="none")
    soft = norm.loss(z, F.one_hot(y, 4).double(), label_smoothing=0.1, reduction="none")
    assert torch.allclose(hard, soft, atol=1e-10)
    mix = 0.3 * F.one_hot(y, 4).double() + 0.7 * F.one_hot((y + 1) % 4, 4).double()
    zg = z.clone().requires_grad_()
    norm.loss(zg, mix, reduction="sum").backward()
    if name in ("sparsemax", "entmax15", "entmax"):
        with torch.no_grad():
            p = norm(z)
        assert torch.allclose(zg.grad, p - mix, atol=1e-10)
    else:
        mixed = 0.3 * norm.loss(z, y, reduction="none") + 0.7 * norm.loss(z, (y + 1) % 4, reduction="none")
        assert torch.allclose(norm.loss(z, mix, reduction="none"), mixed, atol=1e-10)
    with pytest.raises(ValueError, match="probability target"):
        norm.loss(z, mix[:, :3])
