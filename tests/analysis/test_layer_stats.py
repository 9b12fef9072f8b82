"""Per-layer attention statistics of a trained network: S, M, entropy and the share of exact
zeros on attention that is known (one-hot, uniform), the figure and the tables."""

import math

import pytest
import torch
from torch import nn

from mmkit.analysis.layer_stats import STATS, layer_statistics, layer_stats_figure, stats_table
from mmkit.models import Seq2SeqTransformer, TransformerXL, VisionTransformer
from mmkit.nn.attention import attend
from mmkit.normalizers import SoftMax, SparseMax


class Known(nn.Module):
    """Two attention layers on fixed scores: a one-hot (SparseMax of a big gap) and a uniform one."""

    def __init__(self) -> None:
        super().__init__()
        self.sharp, self.flat = SparseMax(), SoftMax()

    def forward(self, n: int = 5) -> None:
        q = torch.zeros(1, 1, n, 1)
        k = torch.zeros(1, 1, n, 1)
        k[..., 0, 0] = 100.0  # scores q·k: 0 everywhere ...
        v = torch.randn(1, 1, n, 2)
        attend(q + 1.0, k, v, self.sharp)  # ... except key 0: 100/1 -> one-hot under SparseMax
        attend(q, k, v, self.flat)  # all scores 0 -> uniform


def test_one_hot_and_uniform_attention():
    model = Known()
    stats = layer_statistics(model, model)
    assert list(stats) == ["sharp", "flat"]
    sharp, flat = stats["sharp"], stats["flat"]
    assert sharp["entropy"] == pytest.approx(0.0, abs=1e-6)
    assert sharp["zeros"] == pytest.approx(4 / 5)  # all but one weight exactly 0
    assert sharp["S"] == pytest.approx(1.0) and sharp["small"] == pytest.approx(4 / 5)
    assert flat["entropy"] == pytest.approx(math.log(5), abs=1e-5)
    assert flat["zeros"] == 0.0 and flat["small"] == 0.0
    assert math.isnan(flat["S"]) and math.isnan(flat["M"])  # no entry below the row mean: undefined
    assert set(sharp) == set(STATS)


def test_every_model_kind_reports_its_attention_layers():
    torch.manual_seed(0)
    vit = VisionTransformer("test", img_size=8, patch_size=4, in_chans=1, num_classes=3,
                            normalizer="sparsemax")
    stats = layer_statistics(vit, lambda: vit(torch.randn(2, 1, 8, 8)))
    assert list(stats) == ["blocks.0.attn", "blocks.1.attn"]
    assert all(0 <= s["zeros"] <= 1 and 0 <= s["S"] <= 1 for s in stats.values())
    lm = TransformerXL(vocab_size=50, preset="test")
    assert len(layer_statistics(lm, lambda: lm(torch.randint(0, 50, (2, 8))))) == len(lm.attn)
    mt = Seq2SeqTransformer(vocab_size=30, preset="test")
    src, tgt = torch.randint(3, 30, (1, 6)), torch.randint(3, 30, (1, 5))
    names = list(layer_statistics(mt, lambda: mt(src, tgt)))
    assert any("cross" in n for n in names) and any(n.startswith("encoder") for n in names)
    with pytest.raises(ValueError, match="no attention call"):
        layer_statistics(vit, lambda: None)


def test_figure_and_tables():
    runs = [(name, {f"blocks.{i}.attn": dict.fromkeys(STATS, value) for i, value in enumerate(values)})
            for name, values in (("softmax", (0.1, 0.2)), ("sparsemax", (0.5, 0.9)))]
    fig = layer_stats_figure(runs)
    assert len(fig.axes) == 4 and all(len(ax.lines) == 2 for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["softmax", "sparsemax"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["L0", "L1"]
    csv_text, markdown = stats_table(runs)
    lines = csv_text.splitlines()
    assert lines[0] == "run,layer,S,M,entropy,zeros,small" and len(lines) == 5
    assert lines[-1].startswith("sparsemax,blocks.1.attn,0.9000")
    assert markdown.splitlines()[1].count("---") == 7 and len(markdown.splitlines()) == 6
