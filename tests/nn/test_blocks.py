"""The shared building blocks: one MLP and one residual sublayer for all three models."""

import pytest
import torch
from torch import nn

from mmkit.models import Seq2SeqTransformer, TransformerXL, VisionTransformer
from mmkit.nn import Mlp, Residual


def test_residual_is_post_or_pre_norm():
    torch.manual_seed(0)
    x, fn = torch.randn(2, 3, 8), nn.Linear(8, 8)
    post, pre = Residual(8, 0.0, pre_norm=False), Residual(8, 0.0, pre_norm=True)
    torch.testing.assert_close(post(x, fn), post.norm(x + fn(x)))
    torch.testing.assert_close(pre(x, fn), x + fn(pre.norm(x)))


def test_residual_drops_the_sublayer_output_while_training():
    x = torch.ones(4, 16)
    block = Residual(16, dropout=0.5, pre_norm=True).train()
    out = block(x, lambda h: torch.ones_like(h))
    assert set(out.unique().tolist()) == {1.0, 3.0}  # x + 0, or x + 1/(1 - 0.5)


def test_mlp_activation_and_error():
    assert isinstance(Mlp(4, 8, activation="relu")[1], nn.ReLU)
    assert isinstance(Mlp(4, 8)[1], nn.GELU)
    with pytest.raises(ValueError, match="activation must be one of"):
        Mlp(4, 8, activation="swish")


def test_every_model_uses_the_shared_mlp_with_its_weight_names():
    vit = VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=3)
    txl = TransformerXL(vocab_size=11, preset="test")
    mt = Seq2SeqTransformer(vocab_size=11, preset="test", activation="relu")
    for model, prefix in ((vit, "blocks.0.mlp"), (txl, "ff.0.net"), (mt, "encoder.0.mlp")):
        mlps = [m for m in model.modules() if isinstance(m, Mlp)]
        assert mlps, type(model).__name__
        keys = model.state_dict().keys()
        assert {f"{prefix}.0.weight", f"{prefix}.3.weight"} <= keys, (prefix, sorted(keys)[:8])
    assert isinstance(txl.ff[0], Residual) and {"ff.0.norm.weight"} <= txl.state_dict().keys()
    assert all(isinstance(m[1], nn.ReLU) for m in txl.modules() if isinstance(m, Mlp))
    assert all(isinstance(m[1], nn.ReLU) for m in mt.modules() if isinstance(m, Mlp))
