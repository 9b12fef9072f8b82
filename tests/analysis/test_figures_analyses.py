"""`mmkit figures layers | oversmoothing | localisation` on fake runs of tiny networks: the
files land where documented (next to the runs, numbers beside the figure), ViT,
Transformer-XL and translator runs all work for `layers`, and a bad checkpoint exits 2
with one line."""

import csv

import pytest
import torch
import yaml
from torch import nn

from mmkit.data.tokenizer import train_tokenizer
from mmkit.entry import main
from mmkit.models import Seq2SeqTransformer, TransformerXL, VisionTransformer

PNG = b"\x89PNG\r\n\x1a\n"
VIT = dict(preset="test", img_size=28, patch_size=7, in_chans=1, num_classes=10, drop_path_rate=0.0)


def fake_run(folder, network: nn.Module, init_args: dict, data: dict) -> str:
    """A run folder with config.yaml and checkpoints/last.ckpt; returns the checkpoint's path."""
    folder.mkdir(parents=True)
    config = {"model": {"init_args": {"network": {"class_path": f"mmkit.models.{type(network).__name__}",
                                                  "init_args": init_args}}},
              "data": {"init_args": data}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "checkpoints").mkdir()
    path = folder / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {f"network.{k}": v for k, v in network.state_dict().items()}}, path)
    return str(path)


@pytest.fixture
def vit_runs(tmp_path):
    torch.manual_seed(0)
    runs = []
    for name in ("softmax", "multimax"):
        args = {**VIT, "normalizer": name, "output_normalizer": name}
        data = {"dataset": "mnist5k"}
        runs.append(fake_run(tmp_path / name / "run", VisionTransformer(**args), args, data))
    return runs


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_vit_commands_write_figures_and_numbers(vit_runs, tmp_path, capsys):
    out = tmp_path / "figures"  # the runs' common folder
    assert main(["figures", "layers", "--ckpt", *vit_runs, "--num", "8"]) == 0
    for name in ("layers.png", "layers_sigma_multimax.png"):
        assert (out / name).read_bytes()[:8] == PNG
    table = rows(out / "layers.csv")
    expected = [(n, f"blocks.{i}.attn") for n in ("softmax", "multimax") for i in range(2)]
    assert [(r["run"], r["layer"]) for r in table] == expected
    assert all(float(r["zeros"]) == 0.0 for r in table)  # neither normalizer gives exact zeros
    assert (out / "layers.md").read_text().startswith("| run | layer | S | M |")
    assert main(["figures", "oversmoothing", "--ckpt", *vit_runs, "--num", "4", "--test_index", "2"]) == 0
    assert (out / "oversmoothing.png").read_bytes()[:8] == PNG
    assert (out / "oversmoothing_maps.png").read_bytes()[:8] == PNG
    assert [r["block"] for r in rows(out / "oversmoothing.csv")] == ["1", "2", "1", "2"]
    assert main(["figures", "localisation", "--ckpt", *vit_runs, "--test_index", "0", "1", "--num", "3"]) == 0
    assert (out / "localisation.png").read_bytes()[:8] == PNG
    table = rows(out / "localisation.csv")
    assert [(r["run"], r["method"], r["images"]) for r in table] == [
        (n, m, "3") for n in ("softmax", "multimax") for m in ("grad-cam", "rollout")]
    assert all(0 <= float(r["ink_share"]) <= 1 and 0 < float(r["ink_fraction"]) < 1 for r in table)
    assert capsys.readouterr().out.count("wrote ") == 3
    # one checkpoint: next to its run; --out picks the path, numbers beside it
    assert main(["figures", "oversmoothing", "--ckpt", vit_runs[0], "--num", "2"]) == 0
    assert (tmp_path / "softmax" / "run" / "figures" / "oversmoothing.csv").is_file()
    assert main(["figures", "layers", "--ckpt", vit_runs[1], "--num", "2", "--out", str(tmp_path / "x.pdf")
                 ]) == 0
    assert (tmp_path / "x.pdf").read_bytes()[:5] == b"%PDF-" and (tmp_path / "x_sigma.pdf").is_file()
    assert (tmp_path / "x.csv").is_file()


@pytest.mark.parametrize("command", [["layers"], ["oversmoothing"], ["localisation", "--test_index", "0"]])
def test_bad_checkpoint_exits_2_with_one_line(tmp_path, capsys, command):
    bad = tmp_path / "run" / "checkpoints" / "last.ckpt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    assert main(["figures", *command, "--ckpt", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmkit figures: error:") and err.count("\n") == 1
    assert main(["figures", *command, "--ckpt", str(tmp_path / "none.ckpt")]) == 2
    assert "not found" in capsys.readouterr().err


def test_layers_on_language_model_and_translator(tmp_path):
    torch.manual_seed(0)
    text = "\n".join(f"line {i} of some text to learn from" for i in range(50))
    tokenizer = train_tokenizer("bpe", text, 300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    lm_args = {"vocab_size": tokenizer.get_vocab_size(), "preset": "test"}
    lm = fake_run(tmp_path / "lm", TransformerXL(**lm_args), lm_args,
                  {"corpus": "pydoc", "max_chars": 3000, "tgt_len": 16})
    mt_args = {"vocab_size": tokenizer.get_vocab_size(), "preset": "test", "normalizer": "entmax15"}
    mt = fake_run(tmp_path / "mt", Seq2SeqTransformer(**mt_args), mt_args,
                  {"corpus": "numbers", "num_train": 20, "num_valid": 4, "num_test": 4, "vocab_size": 300})
    for run in ("lm", "mt"):
        tokenizer.save(str(tmp_path / run / "tokenizer.json"))
    assert main(["figures", "layers", "--ckpt", lm, "--num", "2"]) == 0  # the test split of pydoc
    assert len(rows(tmp_path / "lm" / "figures" / "layers.csv")) == 2
    assert main(["figures", "layers", "--ckpt", lm, "--text", "some text of a line"]) == 0
    assert main(["figures", "layers", "--ckpt", mt, "--num", "3"]) == 0  # teacher-forced test pairs
    layers = [r["layer"] for r in rows(tmp_path / "mt" / "figures" / "layers.csv")]
    assert len(layers) == 6 and any("cross" in name for name in layers)
    assert main(["figures", "layers", "--ckpt", mt, "--text", "seven", "twelve"]) == 0  # greedy targets
    assert (tmp_path / "mt" / "figures" / "layers.png").read_bytes()[:8] == PNG
