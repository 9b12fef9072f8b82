"""SparseMax (Martins & Astudillo 2016): Euclidean projection onto the simplex."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..kernels.sparse_triton import triton_sparsemax, use_triton
from ._sparse import apply_mask, normalize_rows, scaled_shifted, sparsemax_prefix, topk_threshold
from .base import Normalizer
from .losses import fenchel_young_loss


class _SparsemaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor | None) -> Tensor:  # x: [M, N]
        X = scaled_shifted(x, 1.0, mask)
        tau, _ = topk_threshold(X, sparsemax_prefix)
        p = apply_mask(X.sub_(tau).clamp_min_(0), mask)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (p,) = ctx.saved_tensors
        supp = p > 0
        g = grad * supp
        mean = g.sum(-1, keepdim=True) / supp.sum(-1, keepdim=True).clamp_min(1)
        return g.sub_(mean).mul_(supp), None  # (g - mean) on the support, 0 elsewhere


def sparsemax(scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
    """Exact sparsemax along ``dim`` with an optional keep-mask (see :mod:`.base`).

    CUDA inputs run the Triton kernels of :mod:`mmkit.kernels.sparse_triton`; the rest the torch path.
    """
    if use_triton(scores, dim):
        return triton_sparsemax(scores, mask, dim)
    return normalize_rows(_SparsemaxFn.apply, scores, mask, dim)


class SparseMax(Normalizer):
    """SparseMax: ``argmin_p ||p - x||²`` on the simplex; exact, closed-form backward."""

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        return sparsemax(scores, mask, dim)

    def loss(self, logits: Tensor, target: Tensor, *, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        return fenchel_young_loss(logits, target, lambda z: sparsemax(z), 2.0,
                                  ignore_index=ignore_index, label_smoothing=label_smoothing,
                                  reduction=reduction)
