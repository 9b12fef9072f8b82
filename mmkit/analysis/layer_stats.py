"""Per-layer attention statistics of a trained network on a fixed batch, side by side
for several checkpoints.

:func:`layer_statistics` runs any network once (a callable that does the forward pass)
under :func:`~mmkit.nn.attention.capture_attention` and gives, per attention layer
(named as the training callback logs them, e.g. ``blocks.0.attn``):

- ``S``, ``M``: the paper's sparsity and multi-modality (per query row, threshold ε =
  the mean of the row's kept scores; averaged over the rows where they are defined);
- ``entropy``: ``-Σ p log p`` in nats, averaged over query rows;
- ``zeros``: the share of kept attention weights that are exactly 0;
- ``small``: the share below ``small`` (1e-3).

Masked keys (padding, the causal future) take no part. :func:`layer_stats_figure` draws
one panel per statistic (x = layer, one line per checkpoint) and :func:`stats_table`
writes the numbers as CSV and Markdown.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..nn.attention import capture_attention
from ..normalizers import Normalizer
from .figures import COLORS, new_figure, short_layer
from .stats import SUM_FIELDS, attention_sums, layer_name, summarize

#: The statistics per layer, in table order, and their axis labels.
STATS = {"S": "sparsity S", "M": "multi-modality M", "entropy": "entropy (nats)",
         "zeros": "share of exact zeros", "small": "share < 1e-3"}
LayerStats = dict[str, dict[str, float]]  # {layer: {stat: value}}


@torch.no_grad()
def layer_statistics(model: nn.Module, forward: Callable[[], object], small: float = 1e-3) -> LayerStats:
    """The statistics of :data:`STATS` per attention layer of ``model`` for what ``forward()``
    runs (e.g. ``lambda: model(images)``), in the order the layers are called first."""
    names = {id(m): layer_name(n) for n, m in model.named_modules() if isinstance(m, Normalizer)}
    totals: dict[str, Tensor] = {}
    zeros: dict[str, Tensor] = {}

    def record(normalizer: Normalizer, scores: Tensor, probs: Tensor, keep: Tensor | None) -> None:
        name = names.get(id(normalizer), "other")
        sums = attention_sums(scores, probs, keep, small=small)
        kept = torch.isfinite(scores) if keep is None else torch.isfinite(scores) & keep.expand(scores.shape)
        exact = (kept & (probs == 0)).sum().double()
        totals[name] = totals.get(name, torch.zeros(len(SUM_FIELDS), dtype=torch.float64)) + sums.cpu()
        zeros[name] = zeros.get(name, torch.zeros((), dtype=torch.float64)) + exact.cpu()

    was_training = model.training
    model.eval()
    try:
        with capture_attention(record):
            forward()
    finally:
        model.train(was_training)
    if not totals:
        raise ValueError(f"the {type(model).__name__} made no attention call on this input")
    out: LayerStats = {}
    for name, sums in totals.items():
        stats = summarize(sums)
        entries = float(sums[SUM_FIELDS.index("entries")])
        out[name] = {"S": stats.get("S", float("nan")), "M": stats.get("M", float("nan")),
                     "entropy": stats.get("entropy", float("nan")),
                     "zeros": float(zeros[name]) / entries if entries else float("nan"),
                     "small": stats.get("frac_small", float("nan"))}
    return out


def layer_order(runs: Sequence[tuple[str, LayerStats]]) -> list[str]:
    """Every layer of the runs once, in the order first seen."""
    return list(dict.fromkeys(layer for _, stats in runs for layer in stats))


def layer_stats_figure(runs: Sequence[tuple[str, LayerStats]], stats: Sequence[str] = ("S", "M", "entropy",
                       "zeros"), title: str = "") -> Figure:
    """One panel per statistic, x = layer (labelled ``L0``, ``L1``, ...), one line with
    markers per run (checkpoint); the legend is outside, below the panels."""
    if not runs:
        raise ValueError("no layer statistics to plot")
    layers = layer_order(runs)
    fig = new_figure(max(3.2, 0.45 * len(layers) + 1.6) * len(stats), 3.4)
    markers = "osD^vP*X"
    for j, stat in enumerate(stats):
        ax = fig.add_subplot(1, len(stats), j + 1)
        for i, (label, values) in enumerate(runs):
            xs = [k for k, layer in enumerate(layers) if layer in values]
            ys = [values[layers[k]][stat] for k in xs]
            ax.plot(xs, ys, "-", marker=markers[i % len(markers)], color=COLORS[i % len(COLORS)], ms=6,
                    mfc="none", mew=1.5, label=label if j == 0 else None)
        ax.set_xticks(range(len(layers)), [short_layer(n) for n in layers], fontsize=7,
                      rotation=90 if len(layers) > 6 else 0)
        ax.set_title(STATS[stat], fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if stat in ("S", "M", "zeros", "small"):
            ax.set_ylim(-0.04, 1.04)
    fig.legend(loc="outside lower center", ncols=min(len(runs), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def stats_table(runs: Sequence[tuple[str, LayerStats]]) -> tuple[str, str]:
    """The numbers as CSV (``run,layer,S,M,entropy,zeros,small``) and as a Markdown table."""
    header = ["run", "layer", *STATS]
    rows = [[label, layer, *(f"{stats[layer][s]:.4f}" for s in STATS)]
            for label, stats in runs for layer in stats]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return text.getvalue(), "\n".join(lines) + "\n"
