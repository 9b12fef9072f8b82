"""Export, load and fine-tune: ``save_pretrained`` -> ``load_pretrained`` is bit-identical for
every task's network, ``mmkit export`` writes a run's network, ``mmkit fit`` starts from an
export or a timm file (configs/vit/finetune_mnist.yaml), the fine-tuning parameter groups
(layer decay, normalizer learning rate), and bad input is one line with exit status 2."""

import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from mmkit.analysis.checkpoints import load_network
from mmkit.entry import main
from mmkit.models import (
    Seq2SeqTransformer,
    TransformerXL,
    VisionTransformer,
    load_pretrained,
    save_pretrained,
)
from mmkit.normalizers import Normalizer
from mmkit.tasks.optim import apply_lr_scales, param_groups

from .test_cli import MNIST, ROOT, fast

pytest.importorskip("safetensors")
FINETUNE = str(ROOT / "configs/vit/finetune_mnist.yaml")
pytestmark = pytest.mark.usefixtures("in_tmp")


def _perturbed(network):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return network.eval()


NETWORKS = {
    "vit": (dict(preset="test", img_size=16, patch_size=4, in_chans=1, num_classes=7, pool="cls",
                 normalizer="multimax", output_normalizer="entmax15"), VisionTransformer,
            lambda: (torch.randn(2, 1, 16, 16),)),
    "txl": (dict(vocab_size=50, preset="test", normalizer="multimax", output_normalizer="multimax"),
            TransformerXL, lambda: (torch.randint(0, 50, (2, 8)),)),
    "txl_adaptive": (dict(vocab_size=60, preset="test", cutoffs=[20, 40], div_val=2, tie_projs=True),
                     TransformerXL, lambda: (torch.randint(0, 60, (2, 8)),)),
    "seq2seq": (dict(vocab_size=40, preset="test", per_head=True,
                     normalizer={"name": "entmax", "alpha": 1.3, "learnable": True}), Seq2SeqTransformer,
                lambda: (torch.randint(3, 40, (2, 7)), torch.randint(3, 40, (2, 5)))),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_export_round_trip_is_bit_identical(name, tmp_path):
    args, cls, inputs = NETWORKS[name]
    torch.manual_seed(0)
    network = _perturbed(cls(**args))
    save_pretrained(network, tmp_path / "export", args)
    config = json.loads((tmp_path / "export/config.json").read_text())
    assert config["network"] == {"class_path": f"mmkit.models.{cls.__name__}", "init_args": args}
    assert config["format"] == "mmkit-pretrained" and config["mmkit_version"]
    assert config["normalizer"]["attention"] == args.get("normalizer")
    loaded = load_pretrained(tmp_path / "export")
    assert type(loaded) is cls and not loaded.training
    for (k, a), (k2, b) in zip(network.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = inputs()
    with torch.no_grad():
        a, b = network(*x), loaded(*x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    assert torch.equal(a, b)
    save_pretrained(loaded, tmp_path / "again")  # load_pretrained's network knows its init_args
    if name == "txl":  # tied input and output embedding: stored once
        assert config["aliases"]


def test_export_refuses_what_it_cannot_rebuild(tmp_path):
    with pytest.raises(ValueError, match="pass init_args"):
        save_pretrained(VisionTransformer("test", img_size=16, patch_size=4), tmp_path)
    with pytest.raises(FileNotFoundError, match="not an mmkit export directory"):
        load_pretrained(tmp_path)


def test_layer_decay_and_normalizer_lr_groups():
    net = VisionTransformer("test", img_size=16, patch_size=4, in_chans=1, num_classes=7,
                            normalizer="multimax", output_normalizer="multimax")
    plain = param_groups(net)
    assert len(plain) == 2 and "lr_scale" not in plain[0] and plain[1]["weight_decay"] == 0.0
    groups = param_groups(net, layer_decay=0.5, normalizer_lr=0.1)
    optimizer = apply_lr_scales(torch.optim.AdamW(groups, lr=1.0, weight_decay=0.05))
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lr) == sum(1 for _ in net.parameters())
    assert lr[id(net.head.weight)] == 1.0 and lr[id(net.norm.weight)] == 1.0
    assert lr[id(net.blocks[1].attn.q.weight)] == 0.5 and lr[id(net.blocks[0].mlp[0].bias)] == 0.25
    assert lr[id(net.patch_embed.weight)] == lr[id(net.pos_embed)] == 0.125
    normalizer_params = [p for m in net.modules() if isinstance(m, Normalizer) for p in m.parameters()]
    assert normalizer_params and all(lr[id(p)] == 0.1 and decay[id(p)] == 0.0 for p in normalizer_params)
    assert decay[id(net.blocks[0].attn.q.weight)] == 0.05 and decay[id(net.pos_embed)] == 0.0
    with pytest.raises(ValueError, match="layer_decay needs a network with a `blocks` list"):
        param_groups(TransformerXL(50, "test"), layer_decay=0.5)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        param_groups(net, layer_decay=1.5)


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _last(tmp_path, name):
    return next((tmp_path / "runs").glob(f"{name}/version_*/checkpoints/last.ckpt"))


def test_fit_export_then_finetune_from_the_export(tmp_path, capsys):
    """A SoftMax run of configs/vit/mnist.yaml (test size) is exported, loaded without Lightning,
    and fine-tuned with MultiMax by configs/vit/finetune_mnist.yaml."""
    save = tmp_path / "runs"
    assert run(["fit", "-c", MNIST, *fast(save), "--trainer.logger.init_args.name=base"], capsys)[0] == 0
    ckpt = _last(tmp_path, "base")
    code, out, err = run(["export", "--ckpt_path", str(ckpt), "--out", "pretrained/vit_mnist"], capsys)
    assert code == 0 and "exported VisionTransformer to pretrained/vit_mnist" in out, err
    exported = load_pretrained("pretrained/vit_mnist")
    trained = load_network(ckpt)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(exported(x), trained(x))
    # The config's own init_weights (pretrained/vit_mnist) and MultiMax, a few steps.
    code, _, err = run(["fit", "-c", FINETUNE, *fast(save)], capsys)
    assert code == 0, err
    tuned = torch.load(_last(tmp_path, "vit_mnist_finetune"), map_location="cpu", weights_only=True)
    assert tuned["hyper_parameters"]["init_weights"] == "pretrained/vit_mnist"
    state = {k.removeprefix("network."): v for k, v in tuned["state_dict"].items()}
    assert "blocks.0.attn.normalizer.ranges" in state  # MultiMax, new
    # 3 AdamW steps at lr <= 1e-3 move each weight by at most ~3e-3: it started from the export.
    diff = (state["patch_embed.weight"] - exported.patch_embed.weight).abs().max().item()
    assert diff < 0.01, diff


def test_finetune_from_a_timm_file(tmp_path, capsys):
    """A timm ViT state dict (56x56 images, 1000 classes) fills the 28x28, 10-class MNIST ViT:
    positions resized, a fresh head."""
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    theirs = timm_vit.VisionTransformer(
        img_size=56, patch_size=7, in_chans=1, num_classes=1000, embed_dim=32, depth=2, num_heads=2,
        mlp_ratio=2.0, class_token=False, global_pool="avg", fc_norm=False,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-5))
    torch.save(theirs.state_dict(), tmp_path / "timm_vit.pth")
    code, _, err = run(["fit", "-c", FINETUNE, *fast(tmp_path / "runs"), "--model.init_weights=timm_vit.pth",
                        "--model.init_num_heads=2"],
                       capsys)
    assert code == 0, err
    tuned = torch.load(_last(tmp_path, "vit_mnist_finetune"), map_location="cpu", weights_only=True)
    w = tuned["state_dict"]["network.blocks.1.mlp.3.weight"]
    assert (w - theirs.blocks[1].mlp.fc2.weight).abs().max() < 0.01
    assert tuned["state_dict"]["network.head.weight"].shape == (10, 32)


def test_bad_inputs_are_one_line_exit_2(tmp_path, capsys, monkeypatch):
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    small = fast(tmp_path / "runs", steps=1)
    cases = [(["fit", "-c", FINETUNE, *small, "--model.init_weights=nowhere/export"], "not found"),
             (["export", "--ckpt_path", "missing.ckpt"], "checkpoint missing.ckpt not found")]
    theirs = timm_vit.VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=48, depth=2,
                                        num_heads=2, class_token=False, global_pool="avg", fc_norm=False)
    torch.save(theirs.state_dict(), tmp_path / "wide.pth")
    wide = ["fit", "-c", FINETUNE, *small, "--model.init_weights=wide.pth"]
    cases.append(([*wide, "--model.init_num_heads=2"], "do not fit the network"))
    cases.append((wide, "do not record their number of heads"))
    cases.append(([*wide, "--model.init_num_heads=3"], "have 3 heads (init_num_heads); the network has 2"))
    torch.save(VisionTransformer("test", img_size=28, patch_size=7, in_chans=1).state_dict(), "x.pth")
    Path("bad.safetensors").write_bytes(b"garbage")
    cases.append((["fit", "-c", FINETUNE, *small, "--model.init_weights=bad.safetensors"],
                  "not a readable safetensors file"))
    cases.append((["fit", "-c", FINETUNE, *small, "--model.init_weights=wide.pth",
                   "--model.init_timm_model=deit_tiny_patch16_224"], "do not fit timm model"))
    for args, message in cases:
        code, _, err = run(args, capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # as without the extra
    code, _, err = run(["fit", "-c", FINETUNE, *small, "--model.init_weights=bad.safetensors"], capsys)
    assert code == 2 and err.count("\n") == 1 and "pip install 'mmkit[timm]'" in err, err
