import math

import torch

from mmkit.analysis import multimodality, sparsity
from mmkit.analysis.figure1 import figure1_table
from mmkit.entry import main
from mmkit.normalizers import build_normalizer

V = torch.tensor([10.0, 8.0, -1.0], dtype=torch.float64)


def test_figure1_softmax_values():
    p = torch.softmax(V, -1)
    assert torch.allclose(p, torch.tensor([0.8808, 0.1192, 1.5e-5], dtype=torch.float64), atol=1e-4)
    for eps in (-0.5, 0.0, 7.9):  # any ε between -1 and 8
        assert abs(float(multimodality(V, p, eps)) - 0.2384) < 1e-4
        assert abs(float(sparsity(V, p, eps)) - math.exp(-1)) < 1e-12


def test_figure1_sparse_normalizers():
    for name in ("sparsemax", "entmax15", "entmax"):
        p = build_normalizer(name).double()(V)
        assert torch.allclose(p, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
        assert float(multimodality(V, p, 0.0)) == 0.0
        assert float(sparsity(V, p, 0.0)) == 1.0


def test_measures_batch_and_undefined_rows():
    x = torch.tensor([[3.0, 2.0, 1.0], [-3.0, -2.0, -1.0]])
    p = torch.softmax(x, -1)
    m, s = multimodality(x, p, 0.0), sparsity(x, p, 0.0)
    assert m.shape == s.shape == (2,)
    assert torch.isnan(m[1]) and torch.isnan(s[0])  # no relevant / no irrelevant entries
    uniform = torch.full((1, 4), 0.25)
    near_ties = torch.tensor([[1.0, 1.0, 1.0, 1.0]]) + torch.arange(4) * 1e-3
    assert float(multimodality(near_ties, uniform, 0.0)) == 1.0


def test_demo_table(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "| softmax | 0.8808 | 0.1192 | 1.47e-05 | 0.3679 | 0.2384 |" in out
    assert "| sparsemax | 1.0000 | 0.0000 | 0 | 1.0000 | 0.0000 |" in out
    assert figure1_table() in out
