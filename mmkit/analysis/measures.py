"""Sparsity S and multi-modality M (Zhou et al. 2024, Defs 3.2 and 3.3).

Both judge a normalizer's output ``φ(x)`` against its input ``x`` and a threshold
``ε`` that splits the entries into relevant (``x > ε``) and irrelevant (``x < ε``):

- ``M(x) = 1 - (1/N) Σ_{ε < x_n < x_max} (φ(x)_max - φ(x)_n)`` over the N relevant
  entries other than the maximum: 1 when they all share the top mass, 0 when the
  maximum takes it all;
- ``S(x) = (1/L) Σ_{x_l < ε} exp(-φ(x)_l / s)`` over the L irrelevant entries, with
  ``s = min softmax(x)`` as the reference: 1 when they all get exactly zero.

Rows with no entry in a sum get NaN (the measure is undefined there); average
with ``torch.nanmean``.

``eps`` is a float or a tensor that broadcasts against ``x`` with ``dim`` kept (a
per-row threshold such as :func:`row_mean_eps`). ``mask`` (bool, True = keep)
leaves entries out of both measures; non-finite scores (``-inf`` padding) are left
out as well. The max and the reference ``s`` are taken over the kept entries.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _kept(x: Tensor, probs: Tensor, mask: Tensor | None) -> Tensor:
    """The bool entries that take part: ``mask`` (broadcast to ``x``) and finite ``x``."""
    if x.shape != probs.shape:
        raise ValueError(f"x {tuple(x.shape)} and probs {tuple(probs.shape)} differ in shape")
    kept = torch.isfinite(x)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool (True = keep), got {mask.dtype}")
        kept = kept & mask.expand(x.shape)
    return kept


def row_mean_eps(x: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
    """The per-row default threshold ε: the mean of the kept (unmasked, finite) scores.

    On ``v = (10, 8, -1)`` it is 5.67, so {10, 8} are relevant and {-1} irrelevant,
    as in the paper's Figure 1. Returned with ``dim`` kept (``[..., 1]``).
    """
    kept = _kept(x, x, mask)
    total = torch.where(kept, x, 0.0).sum(dim, keepdim=True)
    return total / kept.sum(dim, keepdim=True).clamp_min(1)


def multimodality(x: Tensor, probs: Tensor, eps: float | Tensor, dim: int = -1,
                  mask: Tensor | None = None) -> Tensor:
    """The paper's multi-modality M per row (``dim`` reduced)."""
    kept = _kept(x, probs, mask)
    top = x.masked_fill(~kept, float("-inf")).argmax(dim, keepdim=True)
    not_top = torch.ones_like(x, dtype=torch.bool).scatter_(dim, top, False)
    relevant = (x > eps) & not_top & kept
    gap = probs.gather(dim, top) - probs
    count = relevant.sum(dim)
    total = torch.where(relevant, gap, 0.0).sum(dim)
    return torch.where(count > 0, 1.0 - total / count.clamp_min(1), float("nan"))


def sparsity(x: Tensor, probs: Tensor, eps: float | Tensor, dim: int = -1,
             mask: Tensor | None = None) -> Tensor:
    """The paper's sparsity S per row (``dim`` reduced)."""
    kept = _kept(x, probs, mask)
    low = torch.finfo(torch.float64).min  # masked entries: exp underflows to exactly 0
    ref = torch.softmax(x.double().masked_fill(~kept, low), dim)
    ref = ref.masked_fill(~kept, 1.0).amin(dim, keepdim=True)
    # s underflows to 0 only for score gaps > ~745; keep exp(-p/s) defined (1 at p = 0).
    reference = ref.clamp_min(torch.finfo(torch.float64).tiny)
    irrelevant = (x < eps) & kept
    count = irrelevant.sum(dim)
    terms = torch.exp(-probs.double() / reference).to(probs.dtype)
    total = torch.where(irrelevant, terms, 0.0).sum(dim)
    return torch.where(count > 0, total / count.clamp_min(1), float("nan"))
