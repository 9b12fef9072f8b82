"""Triton helpers shared by the MultiMax flash-attention kernels: σ, σ′ and the masks.

All kernels work on the raw dot products ``a = q·k`` (fp32) and fold the score scale
and log2(e) into the SegLU parameters, so that ``exp2`` replaces ``exp`` and no
per-score multiply by the scale is needed. With ``s = scale·a`` (``scale > 0``) and
``L = log2(e)``::

    L·σ(s) = c·a + Σ_n tb″ₙ·max(b″ₙ − a, 0)ⁿ + td″ₙ·max(a − d″ₙ, 0)ⁿ

    c = L·scale,  b″ = b / scale,  d″ = d / scale,  t″ = L·t·scaleⁿ

The folded parameters live in a small fp32 buffer, ``4·ORDER`` values per head laid
out as ``[b″₁, d″₁, tb″₁, td″₁, b″₂, d″₂, ...]`` (see ``fold_parameters``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_piece(prm, i: tl.constexpr):
    """The folded parameters of order ``i + 1``: ``(b″, d″, tb″, td″)``."""
    b = tl.load(prm + 4 * i)
    d = tl.load(prm + 4 * i + 1)
    tb = tl.load(prm + 4 * i + 2)
    td = tl.load(prm + 4 * i + 3)
    return b, d, tb, td


@triton.jit
def _pow(u, n: tl.constexpr):
    """``uⁿ`` for a compile-time ``n >= 1`` (repeated products, no ``pow``)."""
    out = u
    for _ in tl.static_range(n - 1):
        out = out * u
    return out


@triton.jit
def seglu2(a, prm, c, ORDER: tl.constexpr):
    """``L·σ(scale·a)`` for a tile ``a`` of raw dot products (log2 domain)."""
    x = a * c
    for i in tl.static_range(ORDER):
        b, d, tb, td = _load_piece(prm, i)
        ub = tl.maximum(b - a, 0.0)
        ud = tl.maximum(a - d, 0.0)
        x += tb * _pow(ub, i + 1) + td * _pow(ud, i + 1)
    return x


@triton.jit
def seglu2_slope(a, prm, c, ORDER: tl.constexpr):
    """``(L·σ(scale·a), d/da of it)``; the slope equals ``c·σ′(s)``."""
    x = a * c
    slope = tl.zeros_like(a) + c
    for i in tl.static_range(ORDER):
        b, d, tb, td = _load_piece(prm, i)
        ub = tl.maximum(b - a, 0.0)
        ud = tl.maximum(a - d, 0.0)
        if i == 0:
            x += tb * ub + td * ud
            slope += tl.where(ub > 0.0, -tb, 0.0) + tl.where(ud > 0.0, td, 0.0)
        else:
            pb = _pow(ub, i)  # u^(n-1), reused for the value and the slope
            pd = _pow(ud, i)
            x += tb * (pb * ub) + td * (pd * ud)
            slope += (i + 1) * (td * pd - tb * pb)
    return x, slope


@triton.jit
def load_kv(K, V, k_base, v_base, offs_n, stride_kn, stride_vn, n_k, HEAD_DIM: tl.constexpr,
            V_DIM: tl.constexpr, BOUNDARY: tl.constexpr):
    """The ``[BLOCK_N, HEAD_DIM]`` key and ``[BLOCK_N, V_DIM]`` value tiles at keys ``offs_n``
    (rows past ``n_k`` read as 0 when ``BOUNDARY``)."""
    offs_d = tl.arange(0, HEAD_DIM)
    offs_v = tl.arange(0, V_DIM)
    k_ptrs = K + k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = V + v_base + offs_n[:, None] * stride_vn + offs_v[None, :]
    if BOUNDARY:
        k = tl.load(k_ptrs, mask=offs_n[:, None] < n_k, other=0.0)
        v = tl.load(v_ptrs, mask=offs_n[:, None] < n_k, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v


@triton.jit
def keep_tile(offs_m, offs_n, n_k, off, key_keep, BOUNDARY: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_MASK: tl.constexpr):
    """Bool ``[BLOCK_M, BLOCK_N]`` keep-mask of one (query, key) tile.

    ``BOUNDARY`` adds the key-length bound and the bottom-right causal mask (query
    ``i`` sees keys ``j <= i + off``, ``off = Nk - Nq``); ``key_keep`` is the
    ``[BLOCK_N]`` key-padding mask when ``HAS_MASK``.
    """
    keep = offs_n[None, :] >= 0
    if BOUNDARY:
        keep = keep & (offs_n[None, :] < n_k)
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None] + off)
    if HAS_MASK:
        keep = keep & key_keep[None, :]
    return keep


@triton.jit
def load_key_keep(MASK, mask_base, stride_mk, offs_n, n_k, HAS_MASK: tl.constexpr):
    """The ``[BLOCK_N]`` key-padding mask (all True without a mask)."""
    keep = offs_n >= 0
    if HAS_MASK:
        km = tl.load(MASK + mask_base + offs_n * stride_mk, mask=offs_n < n_k, other=0)
        keep = km != 0
    return keep


@triton.jit
def query_key_bounds(start_m, n_k, off, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     CAUSAL: tl.constexpr):
    """Key range of a query block: ``[0, full)`` needs no bound/causal mask, ``[full, hi)`` does.

    ``full`` is a multiple of ``BLOCK_N``; ``hi <= 0`` means no key is visible.
    """
    if CAUSAL:
        hi = tl.minimum(n_k, start_m + BLOCK_M + off)
        full = tl.maximum(start_m + off + 1, 0)  # keys < full are visible to every row
        full = tl.minimum(full, n_k) // BLOCK_N * BLOCK_N
    else:
        hi = n_k
        full = n_k // BLOCK_N * BLOCK_N
    return full, hi
