"""Import from timm: a timm ViT's weights in mmkit's ViT give timm's logits (fp64), with the
positions resized as timm resizes them and a fresh head for other classes; MultiMax at its
init stays close to SoftMax; what cannot be mapped is one clear error."""

import subprocess
import sys
from functools import partial

import pytest
import torch

from mmkit.models import VisionTransformer, vit_from_timm
from mmkit.models.pretrained import load_weights, read_weights

timm_vit = pytest.importorskip("timm.models.vision_transformer")
pytest.importorskip("safetensors")
TOL = dict(rtol=0, atol=1e-12)


def make_timm(pool="cls", qkv_bias=True, img_size=32, num_classes=5, seed=0, fc_norm=False):
    """A tiny timm ViT (fp32) away from its init, so that every weight matters."""
    torch.manual_seed(seed)
    model = timm_vit.VisionTransformer(
        img_size=img_size, patch_size=8, in_chans=3, num_classes=num_classes, embed_dim=32, depth=2,
        num_heads=2, mlp_ratio=2.0, qkv_bias=qkv_bias, class_token=pool == "cls",
        global_pool="token" if pool == "cls" else "avg", fc_norm=fc_norm,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def images(size=32, n=3):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("pool,qkv_bias", [("cls", True), ("avg", False), ("avg", True)])
def test_logits_equal_timms(pool, qkv_bias):
    theirs = make_timm(pool, qkv_bias)
    ours = vit_from_timm(theirs.state_dict(), num_heads=2)
    assert ours.pool == pool and ours.num_classes == 5 and len(ours.blocks) == 2
    x = images()
    with torch.no_grad():
        a, b = ours.double()(x), theirs.double()(x)
    torch.testing.assert_close(a, b, **TOL)
    print(f"max |diff| {pool} qkv_bias={qkv_bias}: {(a - b).abs().max().item():.3g}")


@pytest.mark.parametrize("pool", ["cls", "avg"])
def test_other_image_size_resizes_positions_as_timm(pool):
    """48x48 images: positions bicubic on the 4x4 -> 6x6 grid as timm's resample_abs_pos_embed."""
    from timm.layers import resample_abs_pos_embed

    theirs = make_timm(pool)
    state = theirs.state_dict()
    ours = vit_from_timm(state, num_heads=2, img_size=48)
    big = make_timm(pool, img_size=48)
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (6, 6),
                                                num_prefix_tokens=int(pool == "cls"))
    big.load_state_dict(state)
    assert ours.pos_embed.shape == big.pos_embed.shape
    torch.testing.assert_close(ours.pos_embed, big.pos_embed, rtol=0, atol=0)
    x = images(48)
    with torch.no_grad():
        a, b = ours.double()(x), big.double()(x)
    torch.testing.assert_close(a, b, **TOL)
    print(f"max |diff| resized {pool}: {(a - b).abs().max().item():.3g}")


def test_other_num_classes_gets_a_fresh_head():
    theirs = make_timm("cls")
    torch.manual_seed(3)
    ours = vit_from_timm(theirs.state_dict(), num_heads=2, num_classes=11)
    assert ours.head.weight.shape == (11, 32) and torch.all(ours.head.bias == 0)
    assert abs(ours.head.weight.std().item() - 0.02) < 0.01  # DeiT's init, not timm's weights
    x = images()
    with torch.no_grad():
        a = ours.double().forward_features(x)[0]
        b = theirs.double().forward_head(theirs.forward_features(x), pre_logits=True)
    torch.testing.assert_close(a, b, **TOL)


def test_multimax_at_init_stays_close_to_softmax():
    """MultiMax(x) = softmax(σ(x)) with σ(x) = x + Σ t·max(±(x - r), 0)ⁿ and every b, d, t drawn
    N(0, 0.02²): σ is the identity plus terms of size ~0.02·|x| + 0.02·x², so on the converted
    model's attention scores (|x| of a few units) every attention row moves by a few percent and
    the logits by a small fraction of their spread. Measured with this seed: max |Δlogits| 0.025
    of a logit range of 2.4, max |Δp| of the output probabilities 0.0055; the bounds below
    leave about 3x room."""
    theirs = make_timm("cls")
    soft = vit_from_timm(theirs.state_dict(), num_heads=2).double()
    torch.manual_seed(0)
    multi = vit_from_timm(theirs.state_dict(), num_heads=2, normalizer="multimax",
                          output_normalizer="multimax").double()
    assert type(multi.blocks[0].attn.normalizer).__name__ == "MultiMax"
    ranges = torch.cat([m.ranges.flatten() for m in multi.modules() if hasattr(m, "ranges")])
    assert ranges.abs().max() < 0.1  # the paper's init, not something copied
    x = images(n=8)
    with torch.no_grad():
        a, b = soft(x), multi(x)
        pa, pb = soft.output_normalizer(a), multi.output_normalizer(b)
    dlogit, dprob = (a - b).abs().max().item(), (pa - pb).abs().max().item()
    print(f"softmax vs multimax at init: max |dlogits| {dlogit:.3g} (range {a.max() - a.min():.3g}), "
          f"max |dp| {dprob:.3g}")
    assert 0 < dlogit < 0.1 and dprob < 0.015


def test_model_name_gives_heads_and_is_checked(tmp_path):
    """deit_tiny's layout (built on the meta device) gives 3 heads; weights of another
    architecture are refused against it."""
    torch.manual_seed(0)
    deit = timm_vit.VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3,
                                      num_classes=10)
    net = vit_from_timm(deit.state_dict(), "deit_tiny_patch16_224")
    assert net.blocks[0].attn.num_heads == 3 and net.img_size == 32 and net.pool == "cls"
    with pytest.raises(ValueError, match="do not fit timm model 'deit_small_patch16_224'"):
        vit_from_timm(deit.state_dict(), "deit_small_patch16_224")
    torch.save(deit.state_dict(), tmp_path / "deit.pth")
    four_heads = VisionTransformer("tiny", img_size=32, patch_size=16, num_heads=4, pool="cls",
                                   num_classes=10)
    # the shapes cannot tell 3 heads from 4: a timm file without its model name or heads is refused
    with pytest.raises(ValueError, match="do not record their number of heads"):
        load_weights(four_heads, tmp_path / "deit.pth")
    with pytest.raises(ValueError, match="have 3 heads .*the network has 4"):
        load_weights(four_heads, tmp_path / "deit.pth", num_heads=3)
    with pytest.raises(ValueError, match=r"does not match timm model .*: num_heads=4 \(timm: 3\)"):
        load_weights(four_heads, tmp_path / "deit.pth", "deit_tiny_patch16_224")
    three = VisionTransformer("tiny", img_size=32, patch_size=16, pool="cls", num_classes=10)
    load_weights(three, tmp_path / "deit.pth", "deit_tiny_patch16_224")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(three.double().eval()(x), deit.double().eval()(x), **TOL)


def test_files_and_load_weights(tmp_path):
    from safetensors.torch import save_file

    theirs = make_timm("avg")
    state = theirs.state_dict()
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"model": state}, tmp_path / "w.pth")
    x = images()
    for name in ("w.safetensors", "w.pth"):
        ours = vit_from_timm(tmp_path / name, num_heads=2)
        with torch.no_grad():
            torch.testing.assert_close(ours.double()(x), theirs.double()(x), **TOL)
    net = VisionTransformer("test", img_size=32, patch_size=8, in_chans=3, num_classes=5, num_heads=2,
                            qkv_bias=True, normalizer="entmax15", output_normalizer="sparsemax")
    assert load_weights(net, tmp_path / "w.safetensors", num_heads=2) == []
    torch.testing.assert_close(net.blocks[1].mlp[3].weight, state["blocks.1.mlp.fc2.weight"])


def heads(network: VisionTransformer) -> int:
    return network.blocks[0].attn.num_heads


def test_bad_inputs_are_one_line_value_errors(tmp_path):
    state = make_timm("cls").state_dict()
    avg_net = VisionTransformer("test", img_size=32, patch_size=8, in_chans=3)
    mini = VisionTransformer("mini", img_size=32, patch_size=8, in_chans=3, pool="cls")
    cases = [
        (lambda: vit_from_timm(state), "heads is not in a state dict; pass the timm model name"),
        (lambda: vit_from_timm({**state, "dist_token": state["cls_token"]}, num_heads=2),
         "distillation token"),
        (lambda: vit_from_timm({k: v for k, v in make_timm("avg", fc_norm=True).state_dict().items()},
                               num_heads=2), "fc_norm"),
        (lambda: vit_from_timm(state, "deit_small_distilled_patch16_224"), "distillation token"),
        (lambda: vit_from_timm(state, "no_such_model_xyz"), "timm has no model"),
        (lambda: read_weights(tmp_path / "missing.safetensors"), "not found"),
        (lambda: read_weights(tmp_path), "is a directory"),
        (lambda: read_weights(_write_bytes(tmp_path / "w.txt")), "unknown suffix"),
        (lambda: load_weights(avg_net, _write(tmp_path / "x.pth", state), num_heads=heads(avg_net)),
         "class token, but the network pools by 'avg'"),
        (lambda: load_weights(mini, _write(tmp_path / "x.pth", state), num_heads=heads(mini)),
         "do not fit the network"),
        (lambda: read_weights(_write_bytes(tmp_path / "bad.safetensors")), "not a readable safetensors"),
    ]
    for call, message in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
            call()
        assert "\n" not in str(info.value)


def _write(path, state):
    torch.save(state, path)
    return path


def _write_bytes(path):
    path.write_bytes(b"not safetensors")
    return path


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    for call in (lambda: vit_from_timm({"patch_embed.proj.weight": torch.zeros(1)}, "deit_tiny_patch16_224"),
                 lambda: read_weights(_write_bytes(tmp_path / "w.safetensors"))):
        with pytest.raises(ImportError, match=r"pip install 'mmkit\[timm\]'") as info:
            call()
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_core_imports_neither_timm_nor_safetensors():
    code = ("import sys, mmkit, mmkit.models, mmkit.tasks, mmkit.entry; "
            "assert 'timm' not in sys.modules and 'safetensors' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
