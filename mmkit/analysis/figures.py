"""Figures of the MultiMax paper and of trained models (matplotlib, Agg canvas, no pyplot).

- :func:`simplex_figure`: Figure 1's trajectories on the 2-simplex of several
  normalizers on ``v = (10, x, -1)`` as ``x`` sweeps (:func:`figure1_trajectories`);
- :func:`pareto_figure`: sparsity S against multi-modality M on the toy input
  (:func:`toy_pareto_series`), :func:`metrics_pareto_figure` from logged statistics
  (:func:`metrics_sm`), one labelled point per run and layer;
- :func:`sigma_figure`: learned SegLU σ(x) per layer (and head).

Attention maps are in :mod:`.attention_maps`.

Every function returns a :class:`~matplotlib.figure.Figure`; :func:`save_figure`
writes it. No global matplotlib state is touched.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ..files import atomic_open
from ..normalizers import Entmax, EvSoftMax, MultiMax, Normalizer, SoftMax, SparseMax
from .figure1 import FIGURE1_EPS, FIGURE1_INPUT
from .measures import multimodality, sparsity

Curve = tuple[str, Tensor]  # a label and points [K, 3] (simplex) or [K, 2] (S, M)
SQRT3_2 = math.sqrt(3) / 2
#: Line colours without the default cycle's grey (C7), which the simplex uses for context.
COLORS = [f"C{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]


def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas (independent of pyplot and its backend)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` (format from the suffix, e.g. ``.png``/``.pdf``; PNG without one),
    creating folders; the file appears whole or not at all."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    return path


# ------------------------------------------------------------------ Figure 1 simplex
def default_figure1_normalizers(multimax: Sequence[MultiMax] = (),
                                temperatures: Sequence[float] = (0.5, 1, 3, 10),
                                label: str = "multimax") -> list[tuple[str, Normalizer]]:
    """SoftMax at ``temperatures``, SparseMax, EntMax-1.5, EvSoftMax and the given MultiMaxes
    (one per head, labelled ``label`` or ``label h<i>``)."""
    rows: list[tuple[str, Normalizer]] = [(f"softmax T={t:g}", SoftMax(temperature=t)) for t in temperatures]
    rows += [("sparsemax", SparseMax()), ("entmax-1.5", Entmax(alpha=1.5)), ("evsoftmax", EvSoftMax())]
    rows += [(label if len(multimax) == 1 else f"{label} h{h}", m) for h, m in enumerate(multimax)]
    return rows


def figure1_trajectories(normalizers: Sequence[tuple[str, Normalizer]], xs: Tensor) -> list[Curve]:
    """Each normalizer's probabilities ``[K, 3]`` on ``(10, x, -1)`` for ``x`` in ``xs`` (eval mode)."""
    a, _, c = FIGURE1_INPUT
    v = torch.stack([torch.full_like(xs, a), xs, torch.full_like(xs, c)], -1).double()  # [K, 3]
    with torch.no_grad():
        return [(label, norm.double().eval()(v).float()) for label, norm in normalizers]


def barycentric(p: Tensor) -> Tensor:
    """Points on the 2-simplex ``[..., 3]`` -> 2-D ``[..., 2]`` in an equilateral triangle."""
    return torch.stack([p[..., 1] + 0.5 * p[..., 2], SQRT3_2 * p[..., 2]], -1)


def simplex_figure(curves: Sequence[Curve], xs: Tensor, mark: float = FIGURE1_INPUT[1],
                   labels: tuple[str, str, str] = ("p(10)", "p(x)", "p(-1)"), cols: int = 4) -> Figure:
    """Small multiples: one triangle per normalizer with its trajectory (a cross marks
    ``x = xs[0]``, a dot ``x = mark``, Figure 1's v) over all the others in grey; the last
    panel plots every normalizer's ``p(x)`` against ``x``, with the legend outside."""
    if not curves:
        raise ValueError("no trajectories to plot")
    cols = min(cols, len(curves) + 1)
    rows = math.ceil((len(curves) + 1) / cols)
    fig = new_figure(2.3 * cols + 1.6, 2.3 * rows + 0.5)
    corners = barycentric(torch.eye(3))
    outline = torch.cat([corners, corners[:1]]).T
    paths = [barycentric(probs) for _, probs in curves]
    at = int((xs - mark).abs().argmin())
    first = None
    for i, ((label, probs), xy) in enumerate(zip(curves, paths)):
        ax = fig.add_subplot(rows, cols, i + 1, sharex=first, sharey=first)
        first = first or ax
        ax.plot(*outline, color="black", lw=0.8)
        for other in paths:
            ax.plot(other[:, 0], other[:, 1], color="0.8", lw=0.6)
        ax.plot(xy[:, 0], xy[:, 1], lw=1.8, color=COLORS[i % len(COLORS)])
        ax.plot(xy[0, 0], xy[0, 1], "x", color="black", ms=6)
        ax.plot(xy[at, 0], xy[at, 1], "o", color="black", ms=4)
        for corner, name, ha, dy in zip(corners, labels, ("left", "right", "center"), (-0.1, -0.1, 0.04)):
            ax.text(float(corner[0]), float(corner[1]) + dy, name, ha=ha, fontsize=7)
        ax.set_title(label, fontsize=9, color=COLORS[i % len(COLORS)])
        ax.set_xlim(-0.08, 1.08)
        ax.set_ylim(-0.14, SQRT3_2 + 0.1)
        ax.set_aspect("equal")
        ax.set_axis_off()
    side = fig.add_subplot(rows, cols, len(curves) + 1)
    for i, (label, probs) in enumerate(curves):
        side.plot(xs, probs[:, 1], color=COLORS[i % len(COLORS)], lw=1.2, label=label)
    side.axvline(mark, color="gray", lw=0.8)
    side.set_xlabel("x", fontsize=8)
    side.set_ylabel(labels[1], fontsize=8)
    side.tick_params(labelsize=7)
    side.grid(alpha=0.3)
    fig.legend(*side.get_legend_handles_labels(), loc="outside right center", fontsize=7, frameon=False)
    fig.suptitle(f"v = (10, x, -1), x from {float(xs[0]):g} (cross) to {float(xs[-1]):g}; "
                 f"dot: x = {mark:g}; grey: the other normalizers", fontsize=9)
    return fig


# ------------------------------------------------------------------ S-M Pareto plot
def sm_point(norm: Normalizer, v: Sequence[float] = FIGURE1_INPUT,
             eps: float = FIGURE1_EPS) -> tuple[float, float]:
    """``(S, M)`` of a normalizer on ``v`` (eval mode, float64)."""
    x = torch.tensor(v, dtype=torch.float64)
    with torch.no_grad():
        p = norm.double().eval()(x)
    return float(sparsity(x, p, eps)), float(multimodality(x, p, eps))


def toy_pareto_series(multimax: Sequence[tuple[str, MultiMax]] = (), num: int = 120) -> list[Curve]:
    """(S, M) on Figure 1's input: SoftMax over temperatures, EntMax over α, single points
    for SparseMax, EntMax-1.5, EvSoftMax and each given MultiMax."""
    temps = torch.logspace(-1, 1, num).tolist()
    alphas = torch.linspace(1.05, 3.0, num // 4).tolist()
    series = [("softmax (T = 0.1 .. 10)", torch.tensor([sm_point(SoftMax(temperature=t)) for t in temps])),
              ("entmax (alpha = 1.05 .. 3)", torch.tensor([sm_point(Entmax(alpha=a)) for a in alphas]))]
    points = [("softmax T=1", SoftMax()), ("sparsemax", SparseMax()), ("entmax-1.5", Entmax(alpha=1.5)),
              ("evsoftmax", EvSoftMax()), *multimax]
    return series + [(label, torch.tensor([sm_point(norm)])) for label, norm in points]


def metrics_sm(path: str | Path) -> list[tuple[str, float, float]]:
    """``(layer, S, M)`` from a metrics.csv written with ``AttentionStatistics``: the last
    logged value of ``attn/<layer>/S`` and ``attn/<layer>/M`` per layer."""
    last: dict[str, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            last.update({k: float(v) for k, v in row.items() if k.startswith("attn/") and v})
    layers = [k[5:-2] for k in last if k.endswith("/S") and k[:-2] + "/M" in last]
    if not layers:
        raise ValueError(f"{path} has no attn/<layer>/S and /M columns; log them with "
                         "-c configs/callbacks/attention_stats.yaml")
    return [(layer, last[f"attn/{layer}/S"], last[f"attn/{layer}/M"]) for layer in layers]


def pareto_figure(series: Sequence[Curve], title: str = "sparsity vs multi-modality") -> Figure:
    """S (x) against M (y): series of several points (a swept parameter) are lines,
    single points hollow markers; the legend is outside the axes."""
    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    markers = iter("osD^vP*X" * len(series))
    for label, points in series:
        if len(points) == 1:  # hollow, each its own marker: points that coincide stay visible
            ax.plot(points[:, 0], points[:, 1], next(markers), label=label, ms=9, mfc="none", mew=1.6)
        else:
            ax.plot(points[:, 0], points[:, 1], ".-", label=label, ms=3)
    ax.set_xlabel("sparsity S")
    ax.set_ylabel("multi-modality M")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right center", fontsize=7, frameon=False)
    return fig


def short_layer(name: str) -> str:
    """A short point label for a layer: ``blocks.3.attn`` -> ``L3``,
    ``encoder.layers.0.self_attn`` -> ``encoder.L0.self_attn``."""
    return re.sub(r"(?:blocks|layers)\.(\d+)", r"L\1", name).removesuffix(".attn")


def metrics_pareto_figure(runs: Sequence[tuple[str, Sequence[tuple[str, float, float]]]],
                          title: str = "per-layer attention S and M (last logged)") -> Figure:
    """S against M of every layer of every run (``(run, [(layer, S, M), ...])``): one colour
    and marker per run (legend), each point labelled with its layer; no lines, as layers
    have no order in this plane."""
    if not runs:
        raise ValueError("no runs to plot")
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    for i, (run, points) in enumerate(runs):
        s, m = [p[1] for p in points], [p[2] for p in points]
        ax.scatter(s, m, s=30, marker="osD^vP*X"[i % 8], color=f"C{i % 10}", label=run, zorder=3)
        for layer, x, y in points:
            ax.annotate(short_layer(layer), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7,
                        color=f"C{i % 10}")
    ax.set_xlabel("sparsity S")
    ax.set_ylabel("multi-modality M")
    ax.set_title(title, fontsize=10)
    ax.margins(0.12)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right center", fontsize=7, frameon=False, title="run", title_fontsize=8)
    return fig


# ------------------------------------------------------------------ learned σ
def sigma_figure(params: dict[str, tuple[Tensor, Tensor]], x_range: tuple[float, float] = (-10.0, 10.0)
                 ) -> Figure:
    """σ(x) of every layer (one panel each; one curve per head), with the identity dashed."""
    from .checkpoints import multimax_from

    if not params:
        raise ValueError("no MultiMax parameters to plot")
    cols = min(4, len(params))
    rows = math.ceil(len(params) / cols)
    fig = new_figure(3.2 * cols, 2.8 * rows)
    x = torch.linspace(*x_range, 401)
    for i, (layer, (ranges, ts)) in enumerate(params.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(x, x, "--", color="gray", lw=1)
        heads = multimax_from(ranges, ts)
        with torch.no_grad():
            for h, norm in enumerate(heads):
                ax.plot(x, norm.modulate(x), lw=1.5, label=f"head {h}" if len(heads) > 1 else None)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("x", fontsize=8)
        ax.set_ylabel("σ(x)", fontsize=8)
        ax.grid(alpha=0.3)
        if len(heads) > 1:
            ax.legend(fontsize=6)
    return fig
