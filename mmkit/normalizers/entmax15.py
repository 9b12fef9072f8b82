"""1.5-EntMax (Peters et al. 2019), exact and sort-based."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..kernels.sparse_triton import triton_entmax15, use_triton
from ._sparse import apply_mask, entmax15_prefix, normalize_rows, scaled_shifted, topk_threshold
from .base import Normalizer
from .losses import fenchel_young_loss


class _Entmax15Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor | None) -> Tensor:  # x: [M, N]
        X = scaled_shifted(x, 0.5, mask)
        tau, _ = topk_threshold(X, entmax15_prefix)
        p = apply_mask(X.sub_(tau).clamp_min_(0).square_(), mask)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (p,) = ctx.saved_tensors
        # Jacobian diag(s) - s sᵀ / Σs with s = p^(2-α) = sqrt(p).
        s = p.sqrt()
        gx = grad * s
        q = gx.sum(-1, keepdim=True) / s.sum(-1, keepdim=True).clamp_min(1e-30)
        return gx.addcmul_(s, q, value=-1.0), None


def entmax15(scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
    """Exact entmax15 along ``dim`` with an optional keep-mask (see :mod:`.base`).

    CUDA inputs run the Triton kernels of :mod:`mmkit.kernels.sparse_triton`; the rest the torch path.
    """
    if use_triton(scores, dim):
        return triton_entmax15(scores, mask, dim)
    return normalize_rows(_Entmax15Fn.apply, scores, mask, dim)


class Entmax15(Normalizer):
    """1.5-EntMax: sparse like SparseMax, smoother; ``p = [x/2 - τ]_+²``."""

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        return entmax15(scores, mask, dim)

    def loss(self, logits: Tensor, target: Tensor, *, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        return fenchel_young_loss(logits, target, lambda z: entmax15(z), 1.5,
                                  ignore_index=ignore_index, label_smoothing=label_smoothing,
                                  reduction=reduction)
