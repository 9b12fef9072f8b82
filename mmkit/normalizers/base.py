"""The normalizer contract and the helpers every normalizer shares.

A normalizer maps scores to probabilities along one dimension::

    probs = normalizer(scores, mask=None, dim=-1)

``mask`` is a boolean tensor broadcastable to ``scores``; ``True`` marks the
entries that take part (the convention of ``F.scaled_dot_product_attention``).
Entries of ``scores`` equal to ``-inf`` are treated as masked as well. Any
modulation (temperature, SegLU) is applied *before* the mask, so ``-inf`` never
reaches a modulator. Masked entries get probability 0; a fully masked row is all
zeros, with finite gradients.

Half-precision inputs (fp16/bf16, from autocast or not) are computed in fp32 and
returned in the input dtype.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ClassVar

import torch
from torch import Tensor, nn

LOW_PRECISION = (torch.float16, torch.bfloat16)


class Normalizer(nn.Module):
    """Base class: ``forward(scores, mask=None, dim=-1) -> probs``.

    Subclasses set ``is_modulated_softmax = True`` when they equal
    ``softmax(modulate(scores))`` for an element-wise ``modulate``; attention
    uses that to dispatch to fused kernels (SDPA, the MultiMax kernel).
    """

    #: ``True`` when ``forward(x) == softmax(self.modulate(x))`` element-wise.
    is_modulated_softmax: ClassVar[bool] = False

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        raise NotImplementedError

    def modulate(self, scores: Tensor) -> Tensor:
        """The element-wise modulation before softmax (only for modulated softmaxes)."""
        raise NotImplementedError(f"{type(self).__name__} is not a modulated softmax")

    def loss(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> Tensor:
        """The output-layer loss that matches this normalizer (classes on the last dim)."""
        raise NotImplementedError

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters that optimizers must exclude from weight decay (all of ours)."""
        return [p for p in self.parameters() if p.requires_grad]


def check_mask(scores: Tensor, mask: Tensor | None) -> Tensor | None:
    """Validate ``mask`` and merge ``-inf`` entries of ``scores`` into it."""
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor (True = keep), got dtype {mask.dtype}; "
                "convert an additive float mask with `mask = additive_mask == 0`"
            )
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to scores of shape "
                f"{tuple(scores.shape)}"
            ) from None
    if scores.numel() and bool(torch.isneginf(scores.amin())):  # a cheap test first
        keep = ~torch.isneginf(scores)
        mask = keep if mask is None else mask & keep
    return mask


def check_dim(scores: Tensor, dim: int) -> int:
    """Return ``dim`` as a non-negative index, with a clear error when out of range."""
    if not -scores.ndim <= dim < max(scores.ndim, 1):
        raise ValueError(f"dim={dim} is out of range for scores with {scores.ndim} dims")
    return dim % max(scores.ndim, 1)


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half inputs, the input dtype otherwise."""
    return torch.float32 if x.dtype in LOW_PRECISION else x.dtype


def no_autocast(x: Tensor):
    """A context that disables autocast on ``x``'s device (we manage precision ourselves)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


def masked_softmax(y: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """Softmax with a keep-mask; fully masked rows give zeros, never NaN."""
    if mask is None:
        return torch.softmax(y, dim)
    # A finite fill keeps fully masked rows finite (uniform), the product zeroes them.
    y = y.masked_fill(~mask, torch.finfo(y.dtype).min)
    return torch.softmax(y, dim) * mask


def per_head_view(param: Tensor, scores: Tensor, dim: int) -> Tensor:
    """Reshape a per-head parameter ``[..., H]`` to ``[..., H, 1, 1]``, which broadcasts
    against ``[..., H, Nq, Nk]`` scores.

    Per-head normalizers expect the head axis third from last, and ``dim`` one of the
    last two axes (the attention layout).
    """
    heads = param.shape[-1]
    if scores.ndim < 3 or scores.shape[-3] != heads or dim < scores.ndim - 2:
        raise ValueError(
            f"a per-head normalizer with {heads} heads expects scores shaped "
            f"[..., {heads}, Nq, Nk] normalized along one of the last two dims; "
            f"got shape {tuple(scores.shape)} and dim={dim - scores.ndim}"
        )
    return param[..., None, None]
