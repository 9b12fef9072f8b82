"""The DeiT-style ViT: shapes, pooling, presets, per-layer normalizers, clear errors."""

import pytest
import torch

from mmkit.models import VIT_PRESETS, VisionTransformer
from mmkit.normalizers import MultiMax, SoftMax, SparseMax


def tiny(**kw):
    args = dict(img_size=16, patch_size=4, in_chans=1, num_classes=7)
    return VisionTransformer("test", **{**args, **kw})


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_forward_shapes_and_tokens(pool):
    model = tiny(pool=pool)
    logits, maps = model.attention_maps(torch.randn(3, 1, 16, 16))
    tokens = 16 + (pool == "cls")
    assert logits.shape == (3, 7)
    assert len(maps) == 2 and maps[0].shape == (3, 2, tokens, tokens)
    assert (model.cls_token is not None) == (pool == "cls")
    assert model.pos_embed.shape == (1, tokens, 32)


def test_average_pooling_is_permutation_invariant_without_positions():
    """GAP pools over patch tokens: with positions zeroed, shuffling patches keeps logits."""
    model = tiny().eval()
    with torch.no_grad():
        model.pos_embed.zero_()
    x = torch.randn(2, 1, 16, 16)
    swapped = x.clone()  # swap the top-left and bottom-right 4x4 patches
    swapped[..., :4, :4], swapped[..., 12:, 12:] = x[..., 12:, 12:], x[..., :4, :4]
    assert torch.allclose(model(x), model(swapped), atol=1e-5)


def test_every_layer_has_its_own_normalizer_and_the_output_one_is_separate():
    model = tiny(normalizer="multimax", output_normalizer="sparsemax")
    norms = [b.attn.normalizer for b in model.blocks]
    assert all(isinstance(n, MultiMax) for n in norms) and norms[0] is not norms[1]
    assert isinstance(model.output_normalizer, SparseMax)
    assert isinstance(tiny().blocks[0].attn.normalizer, SoftMax)


def test_presets_and_overrides():
    assert VIT_PRESETS["small"] == dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0)
    model = VisionTransformer("small", img_size=32, patch_size=8, num_classes=10, depth=1)
    assert len(model.blocks) == 1 and model.head.in_features == 384
    assert model.blocks[0].attn.num_heads == 6


def test_drop_path_rises_linearly_and_is_off_in_eval():
    model = tiny(depth=3, drop_path_rate=0.2)
    assert [round(b.drop_path.p, 3) for b in model.blocks] == [0.0, 0.1, 0.2]
    model.eval()
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model(x), model(x))


def test_all_parameters_learn():
    model = tiny(normalizer="multimax", output_normalizer="multimax", pool="cls")
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 7, (4,))
    model.output_normalizer.loss(model(x), y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs,match", [
    (dict(img_size=28, patch_size=5), r"img_size \(28\) must be divisible by patch_size \(5\)"),
    (dict(depth=0), "depth must be positive"),
    (dict(num_classes=-1), "num_classes must be positive"),
    (dict(embed_dim=30, num_heads=4), "must be positive and divide"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
    (dict(normalizer="nosuchmax"), "unknown normalizer 'nosuchmax'; choose one of softmax"),
    (dict(pool="max"), "pool must be"),
])
def test_bad_configuration_is_a_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_wrong_image_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"images of shape \(2, 1, 28, 28\).*expects \[B, 1, 16, 16\]"):
        tiny()(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="unknown ViT preset"):
        VisionTransformer("huge")
