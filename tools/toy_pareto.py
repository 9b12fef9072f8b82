"""MultiMax beyond SoftMax's sparsity / multi-modality frontier on the paper's toy input.

On v = (10, 8, -1) (Figure 1; ε = 0 splits {10, 8} relevant from {-1} irrelevant):

1. sweep SoftMax's temperature and report the best multi-modality M it reaches with
   sparsity S >= ``--s-min`` (0.9: M ≈ 0.164 at T ≈ 0.83);
2. fit MultiMax's 8 SegLU scalars (order 2) by gradient descent (Adam) to maximize M
   with penalties on S < s-min and on reordering the entries, and report the best
   feasible point, S, M and the parameters.

σ need not be monotone, and a σ that swaps 10 and 8 (p(8) > p(10)) would score M > 1
under Def 3.3; the fit therefore requires p(10) >= p(8) >= p(-1), so M <= 1.

    python tools/toy_pareto.py [--s-min 0.9] [--steps 600] [--lr 0.01]

CPU, a few seconds.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from mmkit.analysis import multimodality, sparsity
from mmkit.analysis.figure1 import FIGURE1_EPS, FIGURE1_INPUT
from mmkit.normalizers import MultiMax


@dataclass
class Point:
    """A normalizer's sparsity and multi-modality on the toy input."""

    s: float
    m: float


def measures(v: torch.Tensor, probs: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, M) as 0-d tensors (differentiable in ``probs``)."""
    return sparsity(v, probs, eps), multimodality(v, probs, eps)


def softmax_frontier(v: torch.Tensor, eps: float, s_min: float,
                     temperatures: torch.Tensor | None = None) -> tuple[float, Point]:
    """The temperature whose SoftMax has the largest M among those with S >= ``s_min``."""
    if temperatures is None:
        temperatures = torch.logspace(-2, 1, 30001, dtype=torch.float64)  # T in [0.01, 10]
    probs = torch.softmax(v[None, :] / temperatures[:, None], -1)  # [T, 3]
    rows = v.expand_as(probs)
    s, m = sparsity(rows, probs, eps), multimodality(rows, probs, eps)
    feasible = s >= s_min
    if not bool(feasible.any()):
        raise ValueError(f"no temperature in the sweep reaches S >= {s_min}")
    best = int(torch.where(feasible, m, float("-inf")).argmax())
    return float(temperatures[best]), Point(float(s[best]), float(m[best]))


@dataclass
class Fit:
    """The best feasible MultiMax found by :func:`fit_multimax`."""

    point: Point
    probs: list[float]
    ranges: list[float]
    ts: list[float]
    step: int


def ordered(v: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """How much ``probs`` breaks the order of ``v``: ``Σ relu(p_next - p)`` along sorted ``v``."""
    p = probs[v.argsort(descending=True)]
    return torch.relu(p[1:] - p[:-1]).sum()


def fit_multimax(v: torch.Tensor, eps: float, s_min: float, *, steps: int = 600, lr: float = 0.01,
                 penalty: float = 10.0, margin: float = 0.01, seed: int = 0) -> Fit:
    """Maximize M subject to S >= ``s_min`` and the order of ``v`` over MultiMax's 8 scalars
    (Adam; penalty ``penalty · (relu(s_min + margin - S) + order violation)``); returns the
    best point that meets both constraints."""
    if steps < 1 or lr <= 0 or penalty <= 0:
        raise ValueError("steps, lr and penalty must be positive")
    torch.manual_seed(seed)
    norm = MultiMax(order=2).double()
    opt = torch.optim.Adam(norm.parameters(), lr=lr)
    best: Fit | None = None
    for step in range(steps + 1):
        probs = norm(v)
        s, m = measures(v, probs, eps)
        violation = ordered(v, probs)
        if s.item() >= s_min and violation.item() == 0 and (best is None or m.item() > best.point.m):
            best = Fit(Point(s.item(), m.item()), probs.tolist(), norm.ranges.tolist(),
                       norm.ts.tolist(), step)
        if step == steps:
            break
        loss = -m + penalty * (torch.relu(s_min + margin - s) + violation)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if best is None:
        raise ValueError(f"MultiMax never reached S >= {s_min}; try more --steps or a larger --lr")
    return best


def run(s_min: float = 0.9, steps: int = 600, lr: float = 0.01, seed: int = 0) -> tuple[float, Point, Fit]:
    """The SoftMax frontier point and the MultiMax fit on the Figure-1 input."""
    v = torch.tensor(FIGURE1_INPUT, dtype=torch.float64)
    temperature, soft = softmax_frontier(v, FIGURE1_EPS, s_min)
    return temperature, soft, fit_multimax(v, FIGURE1_EPS, s_min, steps=steps, lr=lr, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--s-min", type=float, default=0.9, help="required sparsity S")
    parser.add_argument("--steps", type=int, default=600, help="Adam steps")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of MultiMax's initialization")
    args = parser.parse_args(argv)
    temperature, soft, fit = run(args.s_min, args.steps, args.lr, args.seed)
    print(f"v = {FIGURE1_INPUT}, eps = {FIGURE1_EPS}, constraint S >= {args.s_min}")
    print(f"softmax  best over T: T = {temperature:.4f}  S = {soft.s:.4f}  M = {soft.m:.4f}")
    print(f"multimax (step {fit.step}):  S = {fit.point.s:.4f}  M = {fit.point.m:.4f}  "
          f"p = [{', '.join(f'{p:.4g}' for p in fit.probs)}]")
    print("  ranges [b1, d1, b2, d2] = [" + ", ".join(f"{x:.4f}" for x in fit.ranges) + "]")
    print("  ts [tb1, td1, tb2, td2] = [" + ", ".join(f"{x:.4f}" for x in fit.ts) + "]")
    print(f"multimax M / softmax M = {fit.point.m / soft.m:.2f}x at S >= {args.s_min}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
