"""Shared machinery of the sparse normalizers (α-entmax family).

All of them solve ``p_i = [(α-1) x_i - τ]_+^{1/(α-1)}`` with ``Σ p = 1``. We work in
the scaled, max-shifted domain ``X = (α-1) x - max((α-1) x)`` where the threshold
satisfies ``-1 <= τ < 0``; an entry with ``X <= -1`` is never in the support, so
masked entries are filled with ``-2``, which keeps every row finite.

The exact thresholds of sparsemax (α=2) and 1.5-entmax come from the sorted prefix
of each row. A full sort is the cost the ``entmax`` package pays; the support is
usually small, so we take ``topk`` and only widen it for the rows whose support
fills the first ``k`` entries (the answer is then unchanged: it is still exact).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..kernels.rows import check_dim, to_rows
from .base import check_mask, compute_dtype, no_autocast

#: Fill value for masked entries in the scaled, shifted domain (below every τ >= -1).
MASK_FILL = -2.0

#: Maps the sorted prefix ``[m, k]`` of rows ``rows`` (``None``: all) to ``(τ, support size)``.
ThresholdFn = Callable[[Tensor, "Tensor | None"], tuple[Tensor, Tensor]]


def scaled_shifted(x: Tensor, scale: Tensor | float, mask: Tensor | None) -> Tensor:
    """``X = scale * x - rowmax``, masked entries set to ``MASK_FILL``; ``x`` is ``[M, N]``."""
    X = x if isinstance(scale, float) and scale == 1.0 else x * scale
    if mask is None:
        return X - X.amax(-1, keepdim=True)  # a fresh tensor: callers may work in place
    top = X.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
    any_kept = torch.isfinite(top)
    X = (X - torch.where(any_kept, top, 0.0)).masked_fill(~mask, MASK_FILL)
    return torch.where(any_kept, X, 0.0)  # fully masked rows: uniform, zeroed later


def topk_threshold(X: Tensor, fn: ThresholdFn, k: int = 32) -> tuple[Tensor, Tensor]:
    """Exact threshold ``τ`` [M, 1] and support size [M, 1] from the sorted prefix.

    ``fn`` maps rows sorted in descending order ``[m, k]`` to ``(τ, support size)``
    computed on that prefix; a row whose support size is below ``k`` is final.
    """
    n = X.shape[-1]
    k = min(k, n)
    tau, size = fn(torch.topk(X, k, dim=-1).values, None)
    rows = None
    while k < n:
        full = (size if rows is None else size[rows]).squeeze(-1) >= k  # support may extend
        if not bool(full.any()):
            break
        rows = full.nonzero().squeeze(-1) if rows is None else rows[full]
        k = min(4 * k, n)
        t_sub, s_sub = fn(torch.topk(X[rows], k, dim=-1).values, rows)
        tau[rows] = t_sub
        size[rows] = s_sub
    return tau, size


def sparsemax_prefix(z: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sparsemax threshold from rows sorted descending: largest j with ``1 + j z_j > Σ_{i<=j} z_i``."""
    j = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    csum = z.cumsum(-1) - 1.0
    size = (j * z > csum).sum(-1, keepdim=True)  # the condition holds on a prefix
    tau = csum.gather(-1, size - 1) / size.to(z.dtype)
    return tau, size


def entmax15_prefix(z: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """1.5-entmax threshold from rows sorted descending (``p = [z - τ]_+²``).

    For a support of size ρ, ``Σ (z_i - τ)² = 1`` gives
    ``τ_ρ = mean_ρ - sqrt((1 - ρ·var_ρ) / ρ)``; the support is the prefix where
    ``τ_ρ <= z_ρ``.
    """
    rho = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    mean = z.cumsum(-1) / rho
    mean_sq = (z * z).cumsum(-1) / rho
    delta = (1.0 - rho * (mean_sq - mean * mean)) / rho
    tau = mean - delta.clamp_min(0).sqrt()
    size = (tau <= z).sum(-1, keepdim=True)
    return tau.gather(-1, size - 1), size


def apply_mask(p: Tensor, mask: Tensor | None) -> Tensor:
    """Zero masked entries (only fully masked rows have mass there)."""
    return p if mask is None else p * mask


def normalize_rows(fn: Callable[[Tensor, Tensor | None], Tensor], scores: Tensor,
                   mask: Tensor | None, dim: int) -> Tensor:
    """Validate, upcast, flatten to ``[M, N]`` rows, apply ``fn(rows, mask_rows)``, undo."""
    dim = check_dim(scores, dim)
    mask = check_mask(scores, mask)
    with no_autocast(scores):
        x, back = to_rows(scores.to(compute_dtype(scores)), dim)
        m = None if mask is None else to_rows(mask.expand(scores.shape), dim)[0]
        return back(fn(x, m)).to(scores.dtype)
