"""Sinusoidal position encodings: mmkit's (Transformer-XL's) and fairseq's convention.

Both return ``[K, dim]`` tables laid out as ``[sin | cos]`` (the first half sines, the
second half cosines; an odd ``dim`` gets a zero last column). They differ in the
frequencies:

- ``sinusoid``: ``ω_i = 10000^(-2i/dim)``, ``i < dim/2`` (Vaswani et al., Transformer-XL);
- ``fairseq_sinusoid``: ``ω_i = 10000^(-i/(h-1))`` with ``h = dim // 2``, so the lowest
  frequency is exactly ``1/10000`` (fairseq's ``SinusoidalPositionalEmbedding``). fairseq
  also numbers positions from ``padding_idx + 1`` and gives padding tokens a zero
  encoding; :class:`~mmkit.models.Seq2SeqTransformer` does that with ``positions="fairseq"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _table(positions: Tensor, inv_freq: Tensor, dim: int) -> Tensor:
    angles = positions.float()[:, None] * inv_freq[None, :]  # [K, h]
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)  # [K, 2h]
    if dim % 2:
        table = torch.cat([table, table.new_zeros(table.shape[0], 1)], dim=-1)  # [K, dim]
    return table


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """``[K, dim]`` encodings of ``positions`` ``[K]`` with frequencies ``10000^(-2i/dim)``."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim - dim % 2, 2, device=positions.device) / dim))
    return _table(positions, inv_freq, dim)


def fairseq_sinusoid(positions: Tensor, dim: int) -> Tensor:
    """``[K, dim]`` encodings of ``positions`` ``[K]`` with fairseq's frequencies
    ``10000^(-i/(dim//2 - 1))`` (needs ``dim >= 4``)."""
    half = dim // 2
    if half < 2:
        raise ValueError(f"fairseq's sinusoid needs a model width of at least 4, got {dim}")
    step = math.log(10000.0) / (half - 1)
    inv_freq = torch.exp(torch.arange(half, device=positions.device, dtype=torch.float) * -step)
    return _table(positions, inv_freq, dim)


__all__ = ["sinusoid", "fairseq_sinusoid"]
