"""Boolean attention masks (``True`` = may attend, as in SDPA)."""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(num_queries: int, num_keys: int, device: torch.device | None = None) -> Tensor:
    """``[Nq, Nk]`` causal mask aligned bottom-right.

    Query ``i`` sees keys ``j <= i + (Nk - Nq)``: the queries are the last ``Nq``
    positions of the key sequence, as with a KV cache or Transformer-XL memory.
    (SDPA's ``is_causal`` aligns top-left, which only agrees when ``Nq == Nk``.)
    """
    offset = num_keys - num_queries
    q = torch.arange(num_queries, device=device)[:, None]  # [Nq, 1]
    k = torch.arange(num_keys, device=device)[None, :]  # [1, Nk]
    return k <= q + offset


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """``[B, 1, 1, N]`` key-padding mask from per-sequence lengths ``[B]``."""
    max_len = int(lengths.max()) if max_len is None else max_len
    keep = torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # [B, N]
    return keep[:, None, None, :]


def merge_masks(mask: Tensor | None, causal: bool, num_queries: int, num_keys: int,
                device: torch.device) -> Tensor | None:
    """One keep-mask from an optional user mask and the causal flag."""
    if not causal:
        return mask
    tri = causal_mask(num_queries, num_keys, device)
    return tri if mask is None else mask & tri
