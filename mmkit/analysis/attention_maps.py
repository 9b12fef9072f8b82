"""Attention maps of vision transformers on one image, for one or several checkpoints.

:func:`patch_attention` turns a layer's probabilities ``[heads, N, N]`` into maps over
the patch grid: the mean attention each patch receives over all queries, or the
attention of one query (the class token or a patch). :func:`attention_figure` draws
them with one colour scale shared by every panel and one colorbar; entries that are
exactly 0 (sparse normalizers) get their own colour, named on the colorbar.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from .figures import new_figure

#: The query of a map: ``None`` (mean over all queries), ``"cls"`` or a patch index.
Query = int | str | None
ZERO_COLOR = "white"
ATTENTION_LABEL = "attention"  # the label of every map image (AxesImage) of the figure


def patch_attention(attn: Tensor, grid: tuple[int, int], query: Query = None) -> Tensor:
    """Maps ``[heads, gh, gw]`` over the patches from probabilities ``[heads, N, N]``
    (the first ``N - gh * gw`` tokens are class/register tokens, left out as keys)."""
    patches = grid[0] * grid[1]
    prefix = attn.shape[-1] - patches
    if prefix < 0 or attn.ndim != 3:
        raise ValueError(f"attention {tuple(attn.shape)} does not cover a {grid[0]}x{grid[1]} patch grid")
    keys = attn[:, :, prefix:].float()
    if query is None:
        rows = keys.mean(1)
    elif query == "cls":
        if prefix == 0:
            raise ValueError("this model has no class token; give --query a patch index instead")
        rows = keys[:, 0]
    elif isinstance(query, int) and 0 <= query < patches:
        rows = keys[:, prefix + query]
    else:
        raise ValueError(f"--query must be 'cls' or a patch index in 0..{patches - 1}, got {query!r}")
    return rows.reshape(-1, *grid)


def describe(query: Query, heads: bool) -> str:
    """What a panel shows, for the colorbar's label."""
    if query is None:
        what = "mean attention received per patch, averaged over queries"
    elif query == "cls":
        what = "attention of the class token to each patch"
    else:
        what = f"attention of query patch {query} (red box) to each patch"
    return what + ("" if heads else (" and heads" if query is None else ", averaged over heads"))


def _panels(models: Sequence[tuple[str, Sequence[Tensor]]], grid: tuple[int, int], query: Query,
            heads: bool) -> tuple[list[tuple[str, list[Tensor]]], list[str]]:
    """Rows ``(label, maps [gh, gw] per column)`` and the column titles."""
    rows: list[tuple[str, list[Tensor]]] = []
    titles: list[str] = []
    for label, maps in models:
        if not maps:
            raise ValueError(f"no attention maps for {label}")
        per_layer = [patch_attention(m, grid, query) for m in maps]  # [heads, gh, gw] each
        if heads:
            for layer, m in enumerate(per_layer):
                rows.append((f"{label}\nlayer {layer}" if len(models) > 1 else f"layer {layer}", list(m)))
            titles = max(titles, [f"head {h}" for h in range(per_layer[0].shape[0])], key=len)
        else:
            rows.append((label, [m.mean(0) for m in per_layer]))
            titles = max(titles, [f"layer {layer}" for layer in range(len(per_layer))], key=len)
    return rows, titles


def attention_figure(image: Tensor, models: Sequence[tuple[str, Sequence[Tensor]]], grid: tuple[int, int],
                     query: Query = None, heads: bool = False, overlay: bool = False, title: str = ""
                     ) -> Figure:
    """``image`` ``[C, H, W]`` and the attention maps ``[heads, N, N]`` per layer of each
    ``(label, maps)`` in ``models`` (e.g. one per checkpoint, all on the same image).

    Without ``heads``: one row per model, one column per layer (mean over heads); with
    ``heads``: one row per layer (of each model), one column per head. The input image
    is the top-left panel; ``overlay`` also draws it under every map. The title is
    ``title`` and what the maps show (:func:`describe`).
    """
    if not models:
        raise ValueError("no attention maps")
    rows, titles = _panels(models, grid, query, heads)
    values = torch.stack([p for _, panels in rows for p in panels])
    vmax = float(values.max()) or 1.0
    zeros = int((values == 0).sum())
    norm = Normalize(0.0, vmax)
    cmap = colormaps["viridis"].with_extremes(bad=ZERO_COLOR)
    shown = image.detach().float()
    shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp_min(1e-8)
    shown = shown[0] if shown.shape[0] == 1 else shown.permute(1, 2, 0)  # [H, W] or [H, W, C]
    extent = (-0.5, grid[1] - 0.5, grid[0] - 0.5, -0.5)
    cols = len(titles) + 1
    fig = new_figure(1.45 * cols + 1.3, 1.45 * len(rows) + 0.9)
    ax = fig.add_subplot(len(rows), cols, 1)
    ax.imshow(shown.numpy(), cmap="gray", extent=extent)
    ax.set_title("input", fontsize=8)
    ax.set_axis_off()
    map_axes = []
    for r, (label, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 2)
            map_axes.append(ax)
            if overlay:
                ax.imshow(shown.numpy(), cmap="gray", extent=extent)
            data = panel.numpy()
            im = ax.imshow(np.ma.masked_where(data == 0, data), cmap=cmap, norm=norm, extent=extent,
                           interpolation="nearest", alpha=0.6 if overlay else None)
            im.set_label(ATTENTION_LABEL)
            if isinstance(query, int):
                ax.add_patch(Rectangle((query % grid[1] - 0.5, query // grid[1] - 0.5), 1, 1, fill=False,
                                       edgecolor="red", lw=1.5))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    zero_note = (f"{ZERO_COLOR}{' (pale grey over the image)' if overlay else ''}: p = 0 exactly"
                 + ("" if zeros else " (none here)"))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=map_axes, label=f"attention p\n{zero_note}")
    bar.ax.yaxis.label.set_fontsize(8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle("\n".join(filter(None, [title, describe(query, heads)])), fontsize=9)
    return fig
