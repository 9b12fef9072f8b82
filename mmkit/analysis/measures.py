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
"""

from __future__ import annotations

import torch
from torch import Tensor


def multimodality(x: Tensor, probs: Tensor, eps: float, dim: int = -1) -> Tensor:
    """The paper's multi-modality M per row (``dim`` reduced)."""
    if x.shape != probs.shape:
        raise ValueError(f"x {tuple(x.shape)} and probs {tuple(probs.shape)} differ in shape")
    top = x.argmax(dim, keepdim=True)
    not_top = torch.ones_like(x, dtype=torch.bool).scatter_(dim, top, False)
    relevant = (x > eps) & not_top
    gap = probs.gather(dim, top) - probs
    count = relevant.sum(dim)
    total = torch.where(relevant, gap, 0.0).sum(dim)
    return torch.where(count > 0, 1.0 - total / count.clamp_min(1), float("nan"))


def sparsity(x: Tensor, probs: Tensor, eps: float, dim: int = -1) -> Tensor:
    """The paper's sparsity S per row (``dim`` reduced)."""
    if x.shape != probs.shape:
        raise ValueError(f"x {tuple(x.shape)} and probs {tuple(probs.shape)} differ in shape")
    reference = torch.softmax(x.double(), dim).amin(dim, keepdim=True).to(probs.dtype)
    irrelevant = x < eps
    count = irrelevant.sum(dim)
    total = torch.where(irrelevant, torch.exp(-probs / reference), 0.0).sum(dim)
    return torch.where(count > 0, total / count.clamp_min(1), float("nan"))
