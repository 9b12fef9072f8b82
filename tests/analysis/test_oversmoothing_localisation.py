"""Over-smoothing (token cosine similarity per block) and localisation (Grad-CAM, attention
rollout, the map's mass on the ink) on tiny ViTs, and their figures."""

import math

import pytest
import torch

from mmkit.analysis import localisation as loc
from mmkit.analysis import oversmoothing as ovs
from mmkit.models import VisionTransformer


def vit(pool: str = "avg", normalizer: str = "softmax") -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer("test", img_size=8, patch_size=2, in_chans=1, num_classes=3, pool=pool,
                             normalizer=normalizer, drop_path_rate=0.0).eval()


def test_cosine_of_identical_tokens_is_one_and_one_point_per_block():
    same = torch.randn(1, 1, 5).expand(3, 6, 5)
    assert torch.allclose(ovs.mean_pairwise_cosine(same), torch.ones(3))
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert float(ovs.mean_pairwise_cosine(opposite)) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        ovs.mean_pairwise_cosine(torch.randn(1, 1, 4))
    for pool in ("avg", "cls"):
        model = vit(pool)
        outputs = ovs.block_outputs(model, torch.randn(2, 1, 8, 8))
        assert len(outputs) == 2 and all(o.shape == (2, 16, 32) for o in outputs)  # class token dropped
        curve = ovs.oversmoothing_curve(model, torch.randn(2, 1, 8, 8))
        assert curve.shape == (2,) and bool(((curve >= -1) & (curve <= 1 + 1e-6)).all())
    sims = ovs.similarity_matrices(model, torch.randn(1, 8, 8))
    assert len(sims) == 2 and sims[0].shape == (16, 16)
    assert torch.allclose(sims[0].diagonal(), torch.ones(16), atol=1e-5)
    fig = ovs.similarity_figure([("a", sims), ("b", sims)])
    assert sum(len(ax.images) for ax in fig.axes) == 4
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    fig = ovs.curve_figure([("a", curve), ("b", curve)])
    assert len(fig.axes[0].lines) == 2 and list(fig.axes[0].lines[0].get_xdata()) == [1, 2]


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_grad_cam_and_rollout_maps(pool):
    model = vit(pool, "sparsemax" if pool == "cls" else "softmax")
    images = torch.randn(3, 1, 8, 8)
    cams, predicted = loc.grad_cam(model, images)
    assert torch.equal(predicted, model(images).argmax(-1))
    rolls, predicted2 = loc.rollout_of(model, images)
    assert torch.equal(predicted2, predicted)
    for maps in (cams, rolls):
        assert maps.shape == (3, 4, 4) and bool((maps >= 0).all())
        assert maps.flatten(1).amax(1).tolist() == pytest.approx([1.0] * 3)
    assert all(p.grad is None for p in model.parameters())  # gradients are cleaned up
    one, _ = loc.grad_cam(model, images[1:2])  # the batch's images do not mix
    assert torch.allclose(one[0], cams[1], atol=1e-5)
    n = 17 if pool == "cls" else 16
    uniform = [torch.full((1, 2, n, n), 1.0 / n)] * 3  # uniform attention: every patch alike
    assert torch.allclose(loc.attention_rollout(uniform, (4, 4), pool == "cls"), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        loc.attention_rollout(uniform, (3, 3), pool == "cls")


def test_rollout_follows_identity_attention_to_the_queries():
    eye = [torch.eye(5)[None, None]] * 2  # each token attends to itself; class token first
    roll = loc.attention_rollout(eye, (2, 2), class_token=True)
    assert torch.equal(roll, torch.zeros(1, 2, 2))  # the class token only sees itself: a zero map stays 0


def test_ink_share_is_one_on_ink_and_zero_on_background():
    image = torch.zeros(1, 8, 8)
    image[0, :4, :4] = 1.0  # ink fills the top-left patch of a 2 x 2 grid
    on_ink = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert loc.ink_share(on_ink, image) == pytest.approx(1.0)
    assert loc.ink_share(1 - on_ink, image) == pytest.approx(0.0)
    assert loc.ink_share(torch.ones(2, 2), image) == pytest.approx(0.25)  # uniform: the ink's area
    assert math.isnan(loc.ink_share(torch.zeros(2, 2), image))
    assert loc.ink_mask(image * 3 - 1).sum() == 16  # a normalized image: threshold on its range


def test_localisation_figure_has_one_shared_scale():
    model = vit()
    batch = torch.randn(2, 1, 8, 8)
    images = [(f"test {i}", x) for i, x in enumerate(batch)]
    cams, (rolls, preds) = loc.grad_cam(model, batch)[0], loc.rollout_of(model, batch)
    rows = [(name, list(zip(cams, rolls, preds.tolist()))) for name in ("softmax", "multimax")]
    fig = loc.localisation_figure(images, rows)
    maps = [im for ax in fig.axes for im in ax.images if im.get_cmap().name == "jet"]
    assert len(maps) == 2 * 2 * 2 and {im.norm.vmax for im in maps} == {1.0}
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
