"""Cross-attention alignments of a translator (:class:`~mmkit.models.Seq2SeqTransformer`):
for one source sentence, which source tokens each target token attends to.

:func:`cross_attention` decodes the source greedily (or takes a given target), runs the
network once on it and returns every decoder layer's cross-attention ``[heads, T, S]``
(seen with :func:`~mmkit.nn.attention.capture_attention`); :func:`alignment_figure`
draws them as source × target heat maps with one shared colour scale (exact zeros white).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..models.search import greedy_decode
from ..nn.attention import capture_attention
from .attention_maps import ATTENTION_LABEL, ZERO_COLOR
from .figures import new_figure


@torch.no_grad()
def cross_attention(model: nn.Module, src: Tensor, tgt: Sequence[int] | None = None
                    ) -> tuple[list[int], list[Tensor]]:
    """The target ids (``tgt``, or the greedy translation of ``src`` ``[S]``) and the
    cross-attention ``[heads, T + 1, S]`` of every decoder layer, in order; query row
    ``t`` is the step that outputs target token ``t`` (the last one ``</s>``)."""
    model.eval()
    target = list(tgt) if tgt is not None else greedy_decode(model, src[None])[0]
    cross = {id(m): i for i, layer in enumerate(model.decoder) for m in layer.cross_attn.modules()}
    maps: dict[int, Tensor] = {}

    def keep(normalizer: nn.Module, scores: Tensor, probs: Tensor, mask: Tensor | None) -> None:
        if id(normalizer) in cross:
            maps[cross[id(normalizer)]] = probs[0].float()

    tgt_in = torch.tensor([[model.bos_id, *target]], dtype=torch.long)
    with capture_attention(keep):
        model(src[None], tgt_in)
    if len(maps) != len(model.decoder):
        raise ValueError(f"saw the cross-attention of {len(maps)} of {len(model.decoder)} decoder layers")
    return target, [maps[i] for i in range(len(maps))]


def alignment_figure(src_tokens: Sequence[str], tgt_tokens: Sequence[str], maps: Sequence[Tensor],
                     heads: bool = False, title: str = "") -> Figure:
    """Heat maps (rows: target tokens, columns: source tokens) of each decoder layer's
    cross-attention ``[heads, T, S]``: the mean over heads per layer (one row of panels),
    or with ``heads`` one row per layer and one column per head; one colour scale and
    one colorbar; weights exactly 0 are white."""
    if not maps:
        raise ValueError("no cross-attention maps")
    grid = [[m[h] for h in range(m.shape[0])] if heads else [m.mean(0)] for m in maps]
    rows, cols = (len(grid), len(grid[0])) if heads else (1, len(grid))
    panels = [p for row in grid for p in row]
    vmax = float(torch.stack([p.max() for p in panels]).max()) or 1.0
    zeros = int(sum(int((p == 0).sum()) for p in panels))
    norm, cmap = Normalize(0.0, vmax), colormaps["viridis"].with_extremes(bad=ZERO_COLOR)
    side_w, side_h = 0.22 * len(src_tokens) + 1.0, 0.22 * len(tgt_tokens) + 1.0
    fig = new_figure(side_w * cols + 1.4, side_h * rows + 0.8)
    axes = []
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        ax = fig.add_subplot(rows, cols, i + 1)
        axes.append(ax)
        data = panel.numpy()
        im = ax.imshow(np.ma.masked_where(data == 0, data), cmap=cmap, norm=norm, interpolation="nearest")
        im.set_label(ATTENTION_LABEL)
        ax.set_xticks(range(len(src_tokens)), src_tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tgt_tokens)), tgt_tokens if c == 0 else [], fontsize=7)
        ax.set_title(f"layer {r}, head {c}" if heads else f"layer {c}", fontsize=8)
        if r == rows - 1:
            ax.set_xlabel("source", fontsize=8)
        if c == 0:
            ax.set_ylabel("target (output token)", fontsize=8)
    note = f"{ZERO_COLOR}: p = 0 exactly" + ("" if zeros else " (none here)")
    bar = fig.colorbar(im, ax=axes, label=f"cross-attention p\n{note}")
    bar.ax.yaxis.label.set_fontsize(8)
    what = "per head" if heads else "mean over heads"
    fig.suptitle("\n".join(filter(None, [title, f"cross-attention of each target token (rows) to the "
                                                f"source tokens (columns), {what}"])), fontsize=9)
    return fig
