"""Figures of the MultiMax paper and of trained models (matplotlib, Agg canvas, no pyplot).

- :func:`simplex_figure`: Figure 1's trajectories on the 2-simplex of several
  normalizers on ``v = (10, x, -1)`` as ``x`` sweeps (:func:`figure1_trajectories`);
- :func:`pareto_figure`: sparsity S against multi-modality M, from the toy input
  (:func:`toy_pareto_series`) or from logged statistics (:func:`metrics_sm`);
- :func:`sigma_figure`: learned SegLU σ(x) per layer (and head);
- :func:`attention_figure`: a ViT's attention maps on one image, per layer and head.

Every function returns a :class:`~matplotlib.figure.Figure`; :func:`save_figure`
writes it. No global matplotlib state is touched.
"""

from __future__ import annotations

import csv
import math
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
                   labels: tuple[str, str, str] = ("p(10)", "p(x)", "p(-1)")) -> Figure:
    """Left: trajectories on the simplex (a cross marks the start, a dot ``x = mark``,
    Figure 1's v). Right: the same probabilities of the three entries against ``x``."""
    fig = new_figure(11, 4.8)
    ax, side = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    corners = barycentric(torch.eye(3))
    ax.plot(*torch.cat([corners, corners[:1]]).T, color="black", lw=1)
    for corner, label, offset in zip(corners, labels, ((-0.06, -0.05), (0.01, -0.05), (-0.04, 0.03))):
        ax.text(float(corner[0]) + offset[0], float(corner[1]) + offset[1], label)
    at = int((xs - mark).abs().argmin())
    for label, probs in curves:
        xy = barycentric(probs)
        (line,) = ax.plot(xy[:, 0], xy[:, 1], lw=1.5, label=label)
        ax.plot(xy[0, 0], xy[0, 1], "x", color=line.get_color())
        ax.plot(xy[at, 0], xy[at, 1], "o", color=line.get_color())
        for j, style in enumerate(("-", "--", ":")):
            side.plot(xs, probs[:, j], style, color=line.get_color(), lw=1.2)
    ax.set_title(f"(10, x, -1), x from {float(xs[0]):g} (cross) to {float(xs[-1]):g}; dot: x = {mark:g}",
                 fontsize=9)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(loc="upper right", fontsize=7)
    side.set_xlabel("x")
    side.set_title(f"{labels[0]} solid, {labels[1]} dashed, {labels[2]} dotted", fontsize=9)
    side.axvline(mark, color="gray", lw=0.8)
    side.grid(alpha=0.3)
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
    """S (x) against M (y): series of several points are lines, single points markers."""
    fig = new_figure(6, 4.5)
    ax = fig.add_subplot()
    for label, points in series:
        style = "o" if len(points) == 1 else ".-"
        ax.plot(points[:, 0], points[:, 1], style, label=label, ms=6 if len(points) == 1 else 3)
    ax.set_xlabel("sparsity S")
    ax.set_ylabel("multi-modality M")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
        if len(heads) > 1:
            ax.legend(fontsize=6)
    return fig


# ------------------------------------------------------------------ attention maps
def attention_figure(image: Tensor, maps: Sequence[Tensor], grid: tuple[int, int], has_cls: bool) -> Figure:
    """One image ``[C, H, W]`` and its attention maps ``[heads, N, N]`` per layer.

    Each panel is a ``grid`` map over the patches: the class token's attention with a
    class token, otherwise the mean attention each patch receives over all queries.
    Rows are layers; columns the image, the mean over heads, then each head.
    """
    if not maps:
        raise ValueError("no attention maps")
    heads = maps[0].shape[0]
    fig = new_figure(1.6 * (heads + 2), 1.6 * len(maps))
    shown = image.float()
    shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp_min(1e-8)
    shown = shown[0] if shown.shape[0] == 1 else shown.permute(1, 2, 0)  # [H, W] or [H, W, C]
    for layer, attn in enumerate(maps):
        received = attn[:, 0, 1:] if has_cls else attn[:, :, -grid[0] * grid[1]:].mean(1)  # [heads, N]
        panels = [received.mean(0), *received]
        ax = fig.add_subplot(len(maps), heads + 2, layer * (heads + 2) + 1)
        ax.imshow(shown, cmap="gray")
        ax.set_ylabel(f"layer {layer}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(len(maps), heads + 2, layer * (heads + 2) + j + 2)
            ax.imshow(panel.reshape(grid).float(), cmap="viridis")
            ax.axis("off")
            if layer == 0:
                ax.set_title("mean" if j == 0 else f"head {j - 1}", fontsize=8)
    return fig
