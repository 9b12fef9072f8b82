"""Fused attention kernels.

Issue 4 plugs the Triton MultiMax flash-attention kernel in here. Until then
:func:`multimax_attention` reports that no kernel is available and ``attend``
takes the materialized path, which is the reference for any kernel.
"""

from __future__ import annotations

from torch import Tensor

from ...normalizers import MultiMax


def multimax_attention(q: Tensor, k: Tensor, v: Tensor, normalizer: MultiMax, *,
                       mask: Tensor | None, causal: bool, scale: float) -> Tensor | None:
    """The fused MultiMax attention output, or ``None`` when no kernel applies.

    The contract for a kernel: the same value and gradients (q, k, v and the SegLU
    parameters) as ``normalizer(q @ kᵀ · scale, mask) @ v`` with a bottom-right
    causal mask when ``causal``; no dropout, no bias, no weights returned.
    """
    return None
