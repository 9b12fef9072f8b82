"""Translation cross-attention alignments: the maps are each decoder layer's cross-attention
probabilities, and the figure has one colour scale, one colorbar and token labels."""

from __future__ import annotations

import torch

from mmkit.analysis.alignment import alignment_figure, cross_attention
from mmkit.analysis.attention_maps import ATTENTION_LABEL
from mmkit.models import Seq2SeqTransformer


def test_cross_attention_maps_and_figure(tmp_path):
    torch.manual_seed(0)
    model = Seq2SeqTransformer(vocab_size=20, preset="test", normalizer="sparsemax").eval()
    src = torch.tensor([5, 6, 7, 8])
    target, maps = cross_attention(model, src, [9, 10, 11])
    assert target == [9, 10, 11] and len(maps) == 2
    assert all(m.shape == (2, 4, 4) for m in maps)  # [heads, T + 1 (</s>), S]
    assert all(torch.allclose(m.sum(-1), torch.ones(2, 4)) for m in maps)
    greedy, _ = cross_attention(model, src)
    assert isinstance(greedy, list)
    fig = alignment_figure(["a", "b", "c", "d"], ["x", "y", "z", "</s>"], maps, heads=True, title="a b c d")
    ims = [im for ax in fig.axes for im in ax.images if im.get_label() == ATTENTION_LABEL]
    assert len(ims) == 4 and len({im.get_clim() for im in ims}) == 1
    assert [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c", "d"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["x", "y", "z", "</s>"]
    zeros = [(im, m == 0) for im, m in zip(ims, [m[h] for m in maps for h in range(2)]) if (m == 0).any()]
    assert all((im.get_array().mask == mask.numpy()).all() for im, mask in zeros)
    fig = alignment_figure(["a", "b", "c", "d"], ["x", "y", "z", "</s>"], maps)
    assert len([im for ax in fig.axes for im in ax.images]) == 2 and "mean over heads" in fig.get_suptitle()


def test_figures_alignment_command(tmp_path, capsys):
    import yaml

    from mmkit.data.parallel_text import number_pairs
    from mmkit.data.tokenizer import train_tokenizer
    from mmkit.entry import main

    data = {"corpus": "numbers", "num_train": 40, "num_valid": 4, "num_test": 4, "vocab_size": 300}
    pairs = number_pairs(0, (40, 4, 4), 10000)
    text = "\n".join(side for pair in pairs["train"] for side in pair)
    tokenizer = train_tokenizer("bpe", text, 300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    net = {"vocab_size": tokenizer.get_vocab_size(), "preset": "test", "normalizer": "entmax15"}
    model = Seq2SeqTransformer(**net)
    config = {"model": {"init_args": {"network": {"class_path": "mmkit.models.Seq2SeqTransformer",
                                                  "init_args": net}}},
              "data": {"class_path": "mmkit.data.TranslationDataModule", "init_args": data}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": {f"network.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "checkpoints" / "last.ckpt")
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    assert main(["figures", "alignment", "--ckpt", ckpt, "--source", "seven", "--heads"]) == 0
    out = tmp_path / "figures" / "alignment.png"  # next to the run
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(["figures", "alignment", "--ckpt", ckpt]) == 2
    assert "exactly one of --source and --test_index" in capsys.readouterr().err
    assert main(["figures", "alignment", "--ckpt", ckpt, "--test_index", "4"]) == 2  # the split has 4
    assert "not in the test split (0..3)" in capsys.readouterr().err
