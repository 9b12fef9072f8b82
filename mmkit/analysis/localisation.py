"""Where a vision transformer looks: class-activation maps over the patch grid, and how much
of a map lies on the object (for MNIST: on the digit's ink).

- :func:`grad_cam`: Grad-CAM with the usual ViT token reshaping (as pytorch-grad-cam's ViT
  recipe): the tokens of the last block's first LayerNorm (the input of its attention) and
  the gradient of the predicted class's logit w.r.t. them; channel weights = the gradient's
  mean over the patch tokens; map = ReLU of the weighted channel sum per patch, reshaped to
  the patch grid. (The last block's *output* would give a class-token model no gradient on
  its patches: after the last attention they no longer reach the class token.)
- :func:`attention_rollout` (Abnar & Zuidema 2020): per layer the head-mean attention plus
  the identity, rows renormalized, multiplied across layers; the class token's row, or
  without a class token (average pooling) the mean over all query rows;
- :func:`ink_share`: the share of a map's mass on the image's ink (pixels above
  ``threshold`` of the range), the patch map spread evenly over each patch's pixels.

Both maps are non-negative and scaled to a maximum of 1 (an all-zero map stays 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from ..models import VisionTransformer
from .figures import new_figure

METHODS = ("grad-cam", "rollout")


def grid_of(model: VisionTransformer) -> tuple[int, int]:
    side = model.img_size // model.patch_size
    return side, side


def _unit_max_each(maps: Tensor) -> Tensor:
    """Each map ``[B, ...]`` divided by its maximum (all-zero maps stay 0)."""
    top = maps.flatten(1).amax(1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / top.view(-1, *[1] * (maps.ndim - 1))


def grad_cam(model: VisionTransformer, images: Tensor, target: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps ``[B, gh, gw]`` (each max 1) of images ``[B, C, H, W]`` for the classes
    ``target`` ``[B]`` (default: the predicted ones), and those classes. The images are
    independent in eval mode, so one backward pass of the summed logits serves the batch."""
    captured: list[Tensor] = []

    def keep(module: torch.nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        output.retain_grad()
        captured.append(output)

    hook = model.blocks[-1].norm1.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(images.detach())
            classes = logits.argmax(-1) if target is None else target
            model.zero_grad(set_to_none=True)
            logits.gather(1, classes[:, None]).sum().backward()
    finally:
        hook.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    prefix = int(model.cls_token is not None)
    tokens, grads = captured[0].detach()[:, prefix:], captured[0].grad[:, prefix:]  # [B, P, C]
    weights = grads.mean(1, keepdim=True)  # [B, 1, C]
    cam = torch.relu((tokens * weights).sum(-1))  # [B, P]
    return _unit_max_each(cam.reshape(-1, *grid_of(model))), classes.detach()


def attention_rollout(maps: Sequence[Tensor], grid: tuple[int, int], class_token: bool) -> Tensor:
    """Rollout ``[B, gh, gw]`` (each max 1) of attention ``[B, heads, N, N]`` per layer (first
    layer first)."""
    if not maps:
        raise ValueError("no attention maps to roll out")
    n = maps[0].shape[-1]
    prefix = n - grid[0] * grid[1]
    if prefix not in (0, 1) or prefix != int(class_token):
        raise ValueError(f"attention over {n} tokens does not fit a {grid[0]}x{grid[1]} grid "
                         f"{'with' if class_token else 'without'} a class token")
    eye = torch.eye(n, dtype=torch.float64)
    rollout = eye.expand(maps[0].shape[0], n, n)
    for attn in maps:
        a = attn.double().mean(1) + eye  # [B, N, N]
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    rows = rollout[:, 0] if class_token else rollout.mean(1)  # [B, N]
    return _unit_max_each(rows[:, prefix:].float().clamp_min(0).reshape(-1, *grid))


def rollout_of(model: VisionTransformer, images: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`attention_rollout` of ``model`` on images ``[B, C, H, W]``, and the predicted classes."""
    model.eval()
    with torch.no_grad():
        logits, maps = model.attention_maps(images)
    return attention_rollout(maps, grid_of(model), model.cls_token is not None), logits.argmax(-1)


def ink_mask(image: Tensor, threshold: float = 0.5) -> Tensor:
    """The ink ``[H, W]`` (bool) of an image ``[C, H, W]`` or ``[H, W]``: the channel mean
    above ``threshold`` of its range (min 0, max 1)."""
    gray = image.float().mean(0) if image.ndim == 3 else image.float()
    gray = (gray - gray.min()) / (gray.max() - gray.min()).clamp_min(1e-8)
    return gray > threshold


def ink_share(cam: Tensor, image: Tensor, threshold: float = 0.5) -> float:
    """The share of the map's mass on the ink: the map ``[gh, gw]`` is upsampled to the image
    (each patch's value on each of its pixels), then ``Σ map·ink / Σ map``; NaN for a zero map."""
    ink = ink_mask(image, threshold)
    up = F.interpolate(cam[None, None].float().clamp_min(0), size=tuple(ink.shape), mode="nearest")[0, 0]
    total = float(up.sum())
    return float((up * ink).sum()) / total if total > 0 else float("nan")


def localisation_figure(images: Sequence[tuple[str, Tensor]],
                        models: Sequence[tuple[str, Sequence[tuple[Tensor, Tensor, int]]]],
                        title: str = "") -> Figure:
    """One column per test image (its input on top), two rows per checkpoint (Grad-CAM, rollout),
    each map drawn over the image; one colour scale (0..1) and one colorbar.

    ``models``: ``(label, [(grad-cam map, rollout map, predicted class) per image])``.
    """
    if not images or not models:
        raise ValueError("no maps to draw")
    rows, cols = 1 + 2 * len(models), len(images)
    fig = new_figure(1.5 * cols + 2.4, 1.5 * rows + 0.8)
    norm = Normalize(0.0, 1.0)
    axes = []
    shown = []
    for c, (what, image) in enumerate(images):
        pic = image.detach().float()
        pic = (pic - pic.min()) / (pic.max() - pic.min()).clamp_min(1e-8)
        pic = pic[0] if pic.shape[0] == 1 else pic.permute(1, 2, 0)
        shown.append(pic.numpy())
        ax = fig.add_subplot(rows, cols, c + 1)
        ax.imshow(shown[-1], cmap="gray")
        ax.set_title(what, fontsize=7)
        ax.set_axis_off()
    for m, (label, per_image) in enumerate(models):
        for k, method in enumerate(METHODS):
            for c, (cam, roll, pred) in enumerate(per_image):
                ax = fig.add_subplot(rows, cols, (1 + 2 * m + k) * cols + c + 1)
                axes.append(ax)
                h, w = shown[c].shape[:2]
                ax.imshow(shown[c], cmap="gray")
                data = (cam if k == 0 else roll).numpy()
                ax.imshow(np.asarray(data), cmap="jet", norm=norm, alpha=0.5, interpolation="nearest",
                          extent=(-0.5, w - 0.5, h - 0.5, -0.5))
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"{label}\n{method}", fontsize=7)
                empty = " (map all 0)" if not data.max() > 0 else ""
                ax.set_title(f"predicts {pred}{empty}", fontsize=6, pad=2)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap="jet"), ax=axes, label="map (max 1 per panel)")
    bar.ax.yaxis.label.set_fontsize(8)
    bar.ax.tick_params(labelsize=7)
    what = "Grad-CAM (at the last block's input norm) and attention rollout"
    fig.suptitle("\n".join(filter(None, [title, what])), fontsize=9)
    return fig
