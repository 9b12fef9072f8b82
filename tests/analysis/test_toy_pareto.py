"""tools/toy_pareto.py: SoftMax's best M at S >= 0.9 on v = (10, 8, -1), and a fitted
MultiMax beyond it (re-checked from the returned parameters)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mmkit.analysis import multimodality, sparsity
from mmkit.analysis.figure1 import FIGURE1_EPS, FIGURE1_INPUT
from mmkit.normalizers import MultiMax

PATH = Path(__file__).parents[2] / "tools" / "toy_pareto.py"


def load():
    spec = importlib.util.spec_from_file_location("toy_pareto", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


V = torch.tensor(FIGURE1_INPUT, dtype=torch.float64)


def measured(probs):
    return float(sparsity(V, probs, FIGURE1_EPS)), float(multimodality(V, probs, FIGURE1_EPS))


def test_multimax_beats_the_softmax_frontier(capsys):
    toy = load()
    temperature, soft, fit = toy.run(s_min=0.9)
    # SoftMax: the reported point is feasible, slightly hotter is not, and M ≈ 0.164.
    s, m = measured(torch.softmax(V / temperature, -1))
    assert s >= 0.9 and m == pytest.approx(soft.m, abs=1e-9)
    assert measured(torch.softmax(V / (temperature * 1.01), -1))[0] < 0.9
    assert soft.m == pytest.approx(0.164, abs=0.002)
    # MultiMax: rebuilt from the returned parameters, it meets the constraints, keeps
    # the order of v, and has a far larger M.
    norm = MultiMax(order=2).double()
    with torch.no_grad():
        norm.ranges.copy_(torch.tensor(fit.ranges, dtype=torch.float64))
        norm.ts.copy_(torch.tensor(fit.ts, dtype=torch.float64))
        probs = norm(V)
    s, m = measured(probs)
    assert (s, m) == pytest.approx((fit.point.s, fit.point.m), abs=1e-9)
    assert s >= 0.9 and probs[0] >= probs[1] >= probs[2]
    assert m > soft.m + 0.5
    assert toy.main(["--steps", "50"]) == 0
    out = capsys.readouterr().out
    assert "softmax  best over T" in out and "ranges [b1, d1, b2, d2]" in out


def test_the_order_penalty_and_errors():
    toy = load()
    assert float(toy.ordered(V, torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))) == pytest.approx(0.3)
    assert float(toy.ordered(V, torch.softmax(V, -1))) == 0.0
    with pytest.raises(ValueError, match="no temperature"):
        toy.softmax_frontier(V, FIGURE1_EPS, 0.9, torch.tensor([5.0, 10.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        toy.fit_multimax(V, FIGURE1_EPS, 0.9, steps=0)
