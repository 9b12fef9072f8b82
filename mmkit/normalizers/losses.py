"""Output-layer losses that match each normalizer.

- SoftMax / MultiMax: cross-entropy on the modulated logits.
- SparseMax / EntMax: the Fenchel-Young loss of the Tsallis α-entropy
  (Blondel et al. 2020), ``L(z, y) = Ω(y) + Ω*(z) - <z, y>``. Its gradient in ``z``
  is ``p - y`` with ``p = entmax_α(z)``; it is 0 exactly when ``p == y``.

Classes are on the last dimension of ``logits``. ``target`` holds either class
indices, with the shape of ``logits`` without its last dimension, or class
probabilities (a float tensor shaped like ``logits``, as MixUp/CutMix produce).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def _check(logits: Tensor, target: Tensor, label_smoothing: float, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"a probability target must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
    elif logits.shape[:-1] != target.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal logits shape without the class "
            f"dim, {tuple(logits.shape[:-1])}"
        )


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """``F.cross_entropy`` with classes on the last dim, computed in fp32 at least."""
    _check(logits, target, label_smoothing, reduction)
    num_classes = logits.shape[-1]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    soft = target.is_floating_point()
    loss = F.cross_entropy(
        logits.reshape(-1, num_classes).to(dtype),  # [M, K]
        target.reshape(-1, num_classes).to(dtype) if soft else target.reshape(-1),  # [M, K] | [M]
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    return loss.view(logits.shape[:-1]) if reduction == "none" else loss


def tsallis_omega(p: Tensor, alpha: Tensor | float) -> Tensor:
    """``Ω_α(p) = (Σ p^α - 1) / (α(α-1))`` per row (the negative Tsallis entropy).

    Safe for exact zeros in ``p``, also when differentiating with respect to ``α``.
    """
    alpha = torch.as_tensor(alpha, dtype=p.dtype, device=p.device)
    pos = p > 0
    powered = torch.where(pos, torch.where(pos, p, 1.0) ** alpha, 0.0)
    return (powered.sum(-1) - 1.0) / (alpha * (alpha - 1.0))


def fenchel_young_loss(
    logits: Tensor,
    target: Tensor,
    normalize: Callable[[Tensor], Tensor],
    alpha: Tensor | float,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Tsallis-α Fenchel-Young loss; ``normalize`` maps ``[M, K]`` logits to ``entmax_α``.

    Written so that autograd gives the exact gradients: ``p`` is computed without
    gradient, so ``dL/dz = p - y``; by the envelope theorem ``dL/dα`` is the partial
    derivative of ``Ω_α(y) - Ω_α(p)`` at fixed ``p``, which autograd takes through
    :func:`tsallis_omega` when ``alpha`` is a learnable tensor.
    """
    _check(logits, target, label_smoothing, reduction)
    num_classes = logits.shape[-1]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.reshape(-1, num_classes).to(dtype)  # [M, K]
    if target.is_floating_point():  # class probabilities
        y = target.reshape(-1, num_classes).to(dtype)  # [M, K]
        valid = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    else:
        t = target.reshape(-1)  # [M]
        valid = t != ignore_index
        if bool(((t < 0) | (t >= num_classes))[valid].any()):
            raise ValueError(f"target values must be in [0, {num_classes}) or ignore_index")
        y = F.one_hot(torch.where(valid, t, 0), num_classes).to(dtype)
    with torch.no_grad():
        p = normalize(z.detach())
    if label_smoothing > 0:
        y = y * (1.0 - label_smoothing) + label_smoothing / num_classes
    rows = ((p - y) * z).sum(-1) - tsallis_omega(p, alpha) + tsallis_omega(y, alpha)
    rows = torch.where(valid, rows, 0.0)
    if reduction == "none":
        return rows.view(logits.shape[:-1])
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / valid.sum().clamp_min(1)
