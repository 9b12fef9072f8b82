"""Over-smoothing of a vision transformer: how alike its patch tokens become with depth.

- :func:`block_outputs`: every block's output tokens ``[B, N, C]`` (forward hooks);
- :func:`mean_pairwise_cosine`: the mean cosine similarity over all pairs of distinct
  tokens, per image; :func:`oversmoothing_curve` averages it over a batch, one point per
  block (the class token, if any, left out);
- :func:`similarity_matrices`: for one image, each block's patch × patch cosine-similarity
  matrix, drawn by :func:`similarity_figure` with one shared colour scale.

Rising similarity with depth means the tokens lose what distinguishes them (over-smoothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from ..models import VisionTransformer
from .figures import COLORS, new_figure


@torch.no_grad()
def block_outputs(model: VisionTransformer, images: Tensor) -> list[Tensor]:
    """The patch tokens ``[B, P, C]`` after each block (class token dropped), eval mode."""
    outputs: list[Tensor] = []

    def keep(module: torch.nn.Module, args: object, output: object) -> None:
        outputs.append((output[0] if isinstance(output, tuple) else output).detach().float())

    hooks = [block.register_forward_hook(keep) for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    prefix = int(model.cls_token is not None)
    return [out[:, prefix:] for out in outputs]


def cosine_matrix(tokens: Tensor) -> Tensor:
    """Cosine similarities ``[..., N, N]`` of tokens ``[..., N, C]``."""
    unit = F.normalize(tokens.float(), dim=-1)
    return unit @ unit.transpose(-1, -2)


def mean_pairwise_cosine(tokens: Tensor) -> Tensor:
    """The mean cosine similarity of the distinct token pairs ``i != j``: ``[B]`` for ``[B, N, C]``."""
    n = tokens.shape[-2]
    if n < 2:
        raise ValueError(f"need at least 2 tokens for a pairwise similarity, got {n}")
    sim = cosine_matrix(tokens)
    return (sim.sum((-1, -2)) - sim.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))


def oversmoothing_curve(model: VisionTransformer, images: Tensor) -> Tensor:
    """The batch mean of :func:`mean_pairwise_cosine` after each block: ``[depth]``."""
    return torch.stack([mean_pairwise_cosine(tokens).mean() for tokens in block_outputs(model, images)])


def similarity_matrices(model: VisionTransformer, image: Tensor) -> list[Tensor]:
    """Each block's patch × patch cosine-similarity matrix ``[P, P]`` for one image ``[C, H, W]``."""
    return [cosine_matrix(tokens[0]) for tokens in block_outputs(model, image[None])]


def curve_figure(curves: Sequence[tuple[str, Tensor]], title: str = "") -> Figure:
    """Mean pairwise cosine similarity of the patch tokens (y) after each block (x), one
    line per checkpoint."""
    if not curves:
        raise ValueError("no over-smoothing curves to plot")
    fig = new_figure(6.5, 3.8)
    ax = fig.add_subplot()
    for i, (label, curve) in enumerate(curves):
        ax.plot(range(1, len(curve) + 1), curve.tolist(), "-", marker="osD^vP*X"[i % 8], mfc="none",
                color=COLORS[i % len(COLORS)], label=label)
    depth = max(len(c) for _, c in curves)
    ax.set_xticks(range(1, depth + 1))
    ax.set_xlabel("after block")
    ax.set_ylabel("mean pairwise cosine similarity\nof the patch tokens")
    ax.set_title(title or "token similarity with depth (higher: more over-smoothing)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right center", fontsize=8, frameon=False)
    return fig


def similarity_figure(models: Sequence[tuple[str, Sequence[Tensor]]], title: str = "") -> Figure:
    """Patch × patch cosine-similarity matrices: one row per checkpoint, one column per block;
    one colour scale (the range of all panels) and one colorbar."""
    if not models or not all(maps for _, maps in models):
        raise ValueError("no similarity matrices to plot")
    values = torch.cat([m.flatten() for _, maps in models for m in maps])
    norm = Normalize(min(float(values.min()), 0.0), 1.0)
    cols = max(len(maps) for _, maps in models)
    fig = new_figure(1.7 * cols + 1.4, 1.7 * len(models) + 0.8)
    axes = []
    for r, (label, maps) in enumerate(models):
        for c, sim in enumerate(maps):
            ax = fig.add_subplot(len(models), cols, r * cols + c + 1)
            axes.append(ax)
            ax.imshow(sim.numpy(), cmap="magma", norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"block {c + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap="magma"), ax=axes,
                       label="cosine similarity\nof patches i (row), j (column)")
    bar.ax.yaxis.label.set_fontsize(8)
    bar.ax.tick_params(labelsize=7)
    fig.suptitle("\n".join(filter(None, [title, "patch × patch token similarity after each block "
                                         "(patches in row-major order)"])), fontsize=9)
    return fig
