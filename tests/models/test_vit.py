"""The DeiT-style ViT: shapes, pooling, presets, per-layer normalizers, clear errors."""

import math
from functools import partial

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


# ---------------------------------------------------------------- DeiT reference settings
def _normal_tail(k: float) -> float:
    """P(|z| > k) for a standard normal z."""
    return math.erfc(k / math.sqrt(2.0))


def test_deit_init_statistics():
    """Linear weights ~ N(0, 0.02²) cut at timm's absolute [-2, 2] (so effectively untruncated:
    the 2σ tail is a normal's, not empty), zero biases, LayerNorms 1/0 with eps 1e-6."""
    torch.manual_seed(0)
    model = tiny(num_classes=1000, img_size=32)  # head: 32 x 1000 = 32,000 weights
    w = model.head.weight.detach().double().flatten()
    assert abs(w.std().item() - 0.02) < 0.02 * 0.03  # sampling error of the std: ~0.4%
    assert abs(w.mean().item()) < 4 * 0.02 / math.sqrt(w.numel())
    tail = (w.abs() > 2 * 0.02).double().mean().item()
    assert abs(tail - _normal_tail(2.0)) < 0.006  # 4.55% beyond 2σ: not a 2σ-truncated draw
    pos = model.pos_embed.detach().double().flatten()  # 64 tokens x 32 = 2,048 values
    assert abs(pos.std().item() - 0.02) < 0.02 * 0.1
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 5 + 1  # q, kv, proj, fc1, fc2 per block, and the head
    for m in linears:
        assert m.weight.abs().max() <= 2.0  # the truncation bound
        assert abs(m.weight.std().item() - 0.02) < 0.02 * 0.25  # the smallest has 1,024 weights
        assert m.bias is None or torch.all(m.bias == 0)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1
    for m in norms:
        assert m.eps == 1e-6 and torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # The patch embedding keeps PyTorch's Conv2d default, U(±1/√fan_in), as timm leaves it.
    conv = model.patch_embed.weight.detach().double()
    bound = 1 / math.sqrt(1 * 4 * 4)
    assert conv.abs().max() <= bound and abs(conv.std().item() - bound / math.sqrt(3)) < bound * 0.1


def test_cls_token_init_and_xavier_option():
    torch.manual_seed(0)
    cls = tiny(pool="cls", embed_dim=512, num_heads=2, depth=1).cls_token.detach().double()
    assert cls.abs().max() <= 2.0 and abs(cls.std().item() - 0.02) < 0.02 * 0.2
    model = tiny(init="xavier", num_classes=1000, norm_eps=1e-5)
    w = model.head.weight.detach().double()
    bound = math.sqrt(6 / (32 + 1000))  # xavier-uniform: U(±√(6 / (fan_in + fan_out)))
    assert w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < bound * 0.03
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_qkv_bias_switch(qkv_bias):
    model, other = tiny(qkv_bias=qkv_bias), tiny(qkv_bias=not qkv_bias)
    for block in model.blocks:
        assert (block.attn.q.bias is not None) == qkv_bias
        assert (block.attn.kv.bias is not None) == qkv_bias
        assert block.attn.proj.bias is not None  # the output projection keeps its bias
    count = sum(p.numel() for p in model.parameters())
    assert count - sum(p.numel() for p in other.parameters()) == (1 if qkv_bias else -1) * 2 * 3 * 32


def _reference_forward(model, x):
    """DeiT/timm ViT forward, written out with fused qkv weights (timm's layout), fp64."""
    f = torch.nn.functional
    eps, heads = model.norm.eps, model.blocks[0].attn.num_heads
    h = f.conv2d(x, model.patch_embed.weight, model.patch_embed.bias, stride=model.patch_size)
    h = h.flatten(2).transpose(1, 2)
    if model.cls_token is not None:
        h = torch.cat([model.cls_token.expand(len(x), -1, -1), h], 1)
    h = h + model.pos_embed
    b, n, c = h.shape
    for blk in model.blocks:
        a = blk.attn
        w = torch.cat([a.q.weight, a.kv.weight])
        bias = None if a.q.bias is None else torch.cat([a.q.bias, a.kv.bias])
        y = f.layer_norm(h, (c,), blk.norm1.weight, blk.norm1.bias, eps)
        q, k, v = f.linear(y, w, bias).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
        h = h + f.linear((att @ v).transpose(1, 2).reshape(b, n, c), a.proj.weight, a.proj.bias)
        y = f.layer_norm(h, (c,), blk.norm2.weight, blk.norm2.bias, eps)
        h = h + blk.mlp[3](f.gelu(blk.mlp[0](y)))
    h = f.layer_norm(h, (c,), model.norm.weight, model.norm.bias, eps)
    return model.head(h[:, 0] if model.cls_token is not None else h.mean(1))


@pytest.mark.parametrize("pool,qkv_bias,eps",
                         [("avg", False, 1e-6), ("cls", True, 1e-6), ("avg", True, 1e-5)])
def test_forward_equals_the_reference_vit(pool, qkv_bias, eps):
    torch.manual_seed(0)
    model = tiny(pool=pool, qkv_bias=qkv_bias, norm_eps=eps).double().eval()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():  # away from the init, so biases and norms matter
            p.add_(0.1 * torch.randn_like(p))
        assert torch.allclose(model(x), _reference_forward(model, x), atol=1e-10)


@pytest.mark.parametrize("pool,qkv_bias", [("avg", False), ("cls", True)])
def test_parity_with_timm(pool, qkv_bias):
    """Same weights in timm's VisionTransformer give the same logits (fp64); skipped without timm."""
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    ours = tiny(pool=pool, qkv_bias=qkv_bias).double().eval()
    theirs = timm_vit.VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=7, embed_dim=32, depth=2, num_heads=2,
        mlp_ratio=2.0, qkv_bias=qkv_bias, class_token=pool == "cls",
        global_pool="token" if pool == "cls" else "avg", fc_norm=False,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).double().eval()
    state = {"patch_embed.proj.weight": ours.patch_embed.weight,
             "patch_embed.proj.bias": ours.patch_embed.bias,
             "pos_embed": ours.pos_embed, "norm.weight": ours.norm.weight, "norm.bias": ours.norm.bias,
             "head.weight": ours.head.weight, "head.bias": ours.head.bias}
    if pool == "cls":
        state["cls_token"] = ours.cls_token
    for i, blk in enumerate(ours.blocks):
        pre, a = f"blocks.{i}.", blk.attn
        state[pre + "attn.qkv.weight"] = torch.cat([a.q.weight, a.kv.weight])
        if qkv_bias:
            state[pre + "attn.qkv.bias"] = torch.cat([a.q.bias, a.kv.bias])
        for theirs_name, mine in (("norm1", blk.norm1), ("norm2", blk.norm2), ("attn.proj", a.proj),
                                  ("mlp.fc1", blk.mlp[0]), ("mlp.fc2", blk.mlp[3])):
            state[pre + theirs_name + ".weight"], state[pre + theirs_name + ".bias"] = mine.weight, mine.bias
    theirs.load_state_dict(state, strict=True)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-10)


def test_bad_reference_options_are_value_errors():
    with pytest.raises(ValueError, match="init must be 'deit' or 'xavier'"):
        tiny(init="kaiming")
    with pytest.raises(ValueError, match="norm_eps must be positive"):
        tiny(norm_eps=0.0)
