"""EvSoftMax (Chen et al., NeurIPS 2021), the paper's sparse multi-modal baseline.

Entries below the row mean are dropped: ``p ∝ exp(x_i)·(1 if x_i >= mean(x) else ε)``
with a small ε during training (so every entry keeps a gradient) and exactly 0 in
eval mode. The mean is over the unmasked entries.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..kernels.rows import check_dim
from .base import Normalizer, check_mask, compute_dtype, masked_softmax, no_autocast
from .losses import cross_entropy


class EvSoftMax(Normalizer):
    """EvSoftMax with training-time ε (exact zeros in eval mode)."""

    in_default_grid = False  # a baseline from the paper's tables, not one of the studied normalizers

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.eps = eps

    def _shifted(self, x: Tensor, mask: Tensor | None, dim: int, eps: float) -> tuple[Tensor, Tensor]:
        """``x + log(ε)·[x < mean]`` (or the below-mean entries masked when ε = 0)."""
        if mask is None:
            mean = x.mean(dim, keepdim=True)
        else:
            kept = mask.expand(x.shape)
            mean = x.masked_fill(~kept, 0).sum(dim, keepdim=True) / kept.sum(dim, keepdim=True).clamp_min(1)
        below = (x < mean).detach()
        if eps == 0:
            keep = ~below if mask is None else mask & ~below
            return x, keep
        return x + math.log(eps) * below, mask

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        dim = check_dim(scores, dim)
        mask = check_mask(scores, mask)
        with no_autocast(scores):
            x = scores.to(compute_dtype(scores))
            if mask is not None:
                x = x.masked_fill(~mask, 0.0)
            y, keep = self._shifted(x, mask, dim, self.eps if self.training else 0.0)
            return masked_softmax(y, keep, dim).to(scores.dtype)

    def loss(self, logits: Tensor, target: Tensor, *, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        """NLL of the ε-version (finite also when the target falls below the mean)."""
        x = logits.to(compute_dtype(logits))
        y, _ = self._shifted(x, None, -1, self.eps)
        return cross_entropy(y, target, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, reduction=reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
