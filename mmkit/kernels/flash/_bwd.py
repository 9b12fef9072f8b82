"""Backward Triton kernels of MultiMax flash attention.

Two kernels, no per-element atomics:

* ``mm_bwd_dq_kernel`` (one program per query block) runs first. It computes
  ``Δ = rowsum(dO∘O)`` (stored for the second kernel), ``dq``, and the SegLU parameter
  gradient partials: ``dσ`` times the ``4·ORDER`` raw factors, summed over the tile
  in registers, accumulated across the program's loop in a ``[BLOCK_M, NP]`` register
  tile, and written once per program to an fp32 buffer ``[BH, num_blocks, NP]``.
  ``PARTIALS`` picks the accumulators: 1, one ``[BLOCK_M]`` vector per sum (orders 1
  and 2); 2, a ``[BLOCK_M, NP]`` tile (any order); 0, none (parameters without grad).
* ``mm_bwd_dkdv_kernel`` (one program per key block) computes ``dk`` and ``dv``.

Both recompute ``a = q·k``, ``x = L·σ(scale·a)`` and its slope ``c·σ′``, and
``p = exp2(x − lse)``; then ``dσ = p∘(dp − Δ)`` and ``d a = dσ∘slope / L``.
The raw partials (``a``-units, ``u_b = max(b″ − a, 0)``, ``u_d = max(a − d″, 0)``),
per order ``n``: ``Σ dσ·u_bⁿ⁻¹``, ``Σ dσ·u_dⁿ⁻¹`` (an indicator for n = 1),
``Σ dσ·u_bⁿ``, ``Σ dσ·u_dⁿ``. ``store_partials`` scales them into the gradients of
``ranges`` and ``ts`` per program, so the host only sums the programs' rows.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (
    _load_piece,
    _pow,
    keep_tile,
    load_key_keep,
    load_kv,
    query_key_bounds,
    seglu2_slope,
)


@triton.jit
def _piece_sums(dsig, a, prm, i: tl.constexpr):
    """Row sums ``[BLOCK_M]`` of ``dσ`` times the four raw factors of order ``i + 1``."""
    b, d, tb, td = _load_piece(prm, i)
    ub = tl.maximum(b - a, 0.0)
    ud = tl.maximum(a - d, 0.0)
    if i == 0:
        wb = tl.where(ub > 0.0, dsig, 0.0)
        wd = tl.where(ud > 0.0, dsig, 0.0)
    else:
        wb = dsig * _pow(ub, i)
        wd = dsig * _pow(ud, i)
    return tl.sum(wb, 1), tl.sum(wd, 1), tl.sum(wb * ub, 1), tl.sum(wd * ud, 1)


@triton.jit
def _param_partials(gpart, dsig, a, prm, ORDER: tl.constexpr, NP: tl.constexpr):
    """Add this tile's row sums of ``dσ`` times the raw parameter factors to ``gpart``."""
    cols = tl.arange(0, NP)[None, :]
    for i in tl.static_range(ORDER):
        s0, s1, s2, s3 = _piece_sums(dsig, a, prm, i)
        gpart += tl.where(cols == 4 * i, s0[:, None], 0.0)
        gpart += tl.where(cols == 4 * i + 1, s1[:, None], 0.0)
        gpart += tl.where(cols == 4 * i + 2, s2[:, None], 0.0)
        gpart += tl.where(cols == 4 * i + 3, s3[:, None], 0.0)
    return gpart


@triton.jit
def store_partials(PART, bh, pid, gpart, g0, g1, g2, g3, g4, g5, g6, g7, prm, c, ORDER: tl.constexpr,
                   NP: tl.constexpr, PARTIALS: tl.constexpr):
    """Write this program's share of the SegLU parameter gradients (row ``pid`` of
    ``PART[bh]``) once, already scaled: columns ``[∂b₁, ∂d₁, …, ∂b_N, ∂d_N]`` (``ranges``)
    then ``[∂tb₁, ∂td₁, …]`` (``ts``), zeros past ``4·ORDER``. With ``tb″ = L·tb·scaleⁿ``
    and ``c = L·scale``: ``∂b = tb″·n/c·Σ dσ·u_bⁿ⁻¹``, ``∂d = −td″·n/c·Σ dσ·u_dⁿ⁻¹``,
    ``∂t = scaleⁿ·Σ dσ·uⁿ``."""
    if PARTIALS != 0:
        cols = tl.arange(0, NP)
        if PARTIALS == 1:
            sums = tl.where(cols == 0, tl.sum(g0, 0), 0.0) + tl.where(cols == 1, tl.sum(g1, 0), 0.0)
            sums += tl.where(cols == 2, tl.sum(g2, 0), 0.0) + tl.where(cols == 3, tl.sum(g3, 0), 0.0)
            sums += tl.where(cols == 4, tl.sum(g4, 0), 0.0) + tl.where(cols == 5, tl.sum(g5, 0), 0.0)
            sums += tl.where(cols == 6, tl.sum(g6, 0), 0.0) + tl.where(cols == 7, tl.sum(g7, 0), 0.0)
        else:
            sums = tl.sum(gpart, 0)
        scale = c / 1.4426950408889634  # c / L
        coef = tl.zeros([NP], dtype=tl.float32)
        for i in tl.static_range(ORDER):
            _, _, tb, td = _load_piece(prm, i)
            coef = tl.where(cols == 4 * i, tb * (i + 1) / c, coef)
            coef = tl.where(cols == 4 * i + 1, -td * (i + 1) / c, coef)
            coef = tl.where((cols == 4 * i + 2) | (cols == 4 * i + 3), _pow(scale, i + 1), coef)
        piece, j = cols // 4, cols % 4
        dest = tl.where(j < 2, 2 * piece + j, 2 * ORDER + 2 * piece + j - 2)
        dest = tl.where(cols < 4 * ORDER, dest, cols)  # [NP]: ranges, then ts, then zeros
        tl.store(PART + (bh.to(tl.int64) * tl.num_programs(0) + pid) * NP + dest, sums * coef)


@triton.jit
def accumulate_partials(gpart, g0, g1, g2, g3, g4, g5, g6, g7, dsig, a, prm, ORDER: tl.constexpr,
                        NP: tl.constexpr, PARTIALS: tl.constexpr):
    """Add one tile's parameter partial sums: ``PARTIALS`` 1, one row vector per sum (orders
    1 and 2, in ``g0..g7``); 2, the ``[rows, NP]`` tile ``gpart`` (any order); 0, nothing."""
    if PARTIALS == 1:
        s0, s1, s2, s3 = _piece_sums(dsig, a, prm, 0)
        g0, g1, g2, g3 = g0 + s0, g1 + s1, g2 + s2, g3 + s3
        if ORDER == 2:
            s4, s5, s6, s7 = _piece_sums(dsig, a, prm, 1)
            g4, g5, g6, g7 = g4 + s4, g5 + s5, g6 + s6, g7 + s7
    elif PARTIALS == 2:
        gpart = _param_partials(gpart, dsig, a, prm, ORDER, NP)
    return gpart, g0, g1, g2, g3, g4, g5, g6, g7


@triton.jit
def load_query_rows(Q, DO, LSE, DELTA, q_base, do_base, row_base, stride_qm, stride_dom, offs_m, n_q,
                    HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr):
    """``q``, ``dO``, lse and Δ of the query rows ``offs_m``. Rows past Nq load dO = 0 and
    lse = +inf, so they add nothing (p = 0)."""
    offs_d = tl.arange(0, HEAD_DIM)
    offs_v = tl.arange(0, V_DIM)
    row_ok = offs_m < n_q
    q = tl.load(Q + q_base + offs_m[:, None] * stride_qm + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + do_base + offs_m[:, None] * stride_dom + offs_v[None, :], mask=row_ok[:, None],
                 other=0.0)
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def key_block_query_bounds(start_n, n_q, off, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Causal query range of a key block: queries before ``lo`` see none of its keys, those
    in ``[lo, mid)`` some (bottom-right mask needed), those from ``mid`` on all of them."""
    lo = tl.maximum(start_n - off, 0) // BLOCK_M * BLOCK_M
    mid = (tl.maximum(start_n + BLOCK_N - 1 - off, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    return lo, tl.minimum(mid, n_q)


@triton.jit
def store_key_rows(DK, DV, dk, dv, keep, dk_base, dv_base, offs_n, stride_dkn, stride_dvn, n_k, ln2,
                   HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr):
    """Store ``dk·ln2`` and ``dv`` of the key rows ``offs_n``: zeros for keys not kept
    (padded), nothing past Nk."""
    offs_d = tl.arange(0, HEAD_DIM)
    offs_v = tl.arange(0, V_DIM)
    key_ok = offs_n < n_k
    dk = tl.where(keep[:, None], dk * ln2, 0.0)
    dv = tl.where(keep[:, None], dv, 0.0)
    tl.store(DK + dk_base + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=key_ok[:, None])
    tl.store(DV + dv_base + offs_n[:, None] * stride_dvn + offs_v[None, :], dv.to(DV.dtype.element_ty),
             mask=key_ok[:, None])


@triton.jit
def _dq_loop(dq, gpart, g0, g1, g2, g3, g4, g5, g6, g7, q, do, lse, delta, K, V, MASK, prm,
             k_base, v_base, mask_base, stride_kn, stride_vn, stride_mk, lo, hi, offs_m, n_k, off, c,
             HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
             ORDER: tl.constexpr, NP: tl.constexpr, BOUNDARY: tl.constexpr, CAUSAL: tl.constexpr,
             HAS_MASK: tl.constexpr, PRECISION: tl.constexpr, PARTIALS: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = load_kv(K, V, k_base, v_base, offs_n, stride_kn, stride_vn, n_k, HEAD_DIM, V_DIM, BOUNDARY)
        a = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        x, slope = seglu2_slope(a, prm, c, ORDER)
        p = tl.exp2(x - lse[:, None])
        key_keep = load_key_keep(MASK, mask_base, stride_mk, offs_n, n_k, HAS_MASK)
        keep = keep_tile(offs_m, offs_n, n_k, off, key_keep, BOUNDARY, CAUSAL, HAS_MASK)
        if BOUNDARY:
            p = tl.where(keep, p, 0.0)
        elif HAS_MASK:
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N]
        dsig = p * (dp - delta[:, None])  # gradient w.r.t. σ(s)
        dq += tl.dot((dsig * slope).to(k.dtype), k, input_precision=PRECISION)
        gpart, g0, g1, g2, g3, g4, g5, g6, g7 = accumulate_partials(
            gpart, g0, g1, g2, g3, g4, g5, g6, g7, dsig, a, prm, ORDER, NP, PARTIALS)
    return dq, gpart, g0, g1, g2, g3, g4, g5, g6, g7


@triton.jit
def mm_bwd_dq_kernel(Q, K, V, DO, OUT, LSE, DELTA, DQ, PART, PRM, MASK,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                     stride_ob, stride_oh, stride_om, stride_dqb, stride_dqh, stride_dqm,
                     stride_mb, stride_mh, stride_mk, stride_ph,
                     H, N_Q, N_K, c, ln2,
                     HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, ORDER: tl.constexpr, NP: tl.constexpr,
                     CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                     PARTIALS: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    if CAUSAL:  # the longest rows first
        pid = tl.num_programs(0) - 1 - pid
    start_m = pid * BLOCK_M
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_v = tl.arange(0, V_DIM)
    row_ok = offs_m < N_Q
    row_off = bh.to(tl.int64) * N_Q + offs_m

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_v[None, :],
                 mask=row_ok[:, None], other=0.0)
    o = tl.load(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_v[None, :],
                mask=row_ok[:, None], other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(DELTA + row_off, delta, mask=row_ok)
    lse = tl.load(LSE + row_off, mask=row_ok, other=float("inf"))

    prm = PRM + h * stride_ph
    off = N_K - N_Q
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    gpart = tl.zeros([BLOCK_M, NP], dtype=tl.float32)
    g0 = tl.zeros([BLOCK_M], dtype=tl.float32)
    g1, g2, g3, g4, g5, g6, g7 = g0, g0, g0, g0, g0, g0, g0
    full, hi = query_key_bounds(start_m, N_K, off, BLOCK_M, BLOCK_N, CAUSAL)
    k_base = b * stride_kb + h * stride_kh
    v_base = b * stride_vb + h * stride_vh
    mask_base = b * stride_mb + h * stride_mh
    dq, gpart, g0, g1, g2, g3, g4, g5, g6, g7 = _dq_loop(
        dq, gpart, g0, g1, g2, g3, g4, g5, g6, g7, q, do, lse, delta, K, V, MASK, prm,
        k_base, v_base, mask_base, stride_kn, stride_vn, stride_mk, 0, full, offs_m, N_K, off, c,
        HEAD_DIM, V_DIM, BLOCK_N, ORDER, NP, False, CAUSAL, HAS_MASK, PRECISION,
        PARTIALS)
    dq, gpart, g0, g1, g2, g3, g4, g5, g6, g7 = _dq_loop(
        dq, gpart, g0, g1, g2, g3, g4, g5, g6, g7, q, do, lse, delta, K, V, MASK, prm,
        k_base, v_base, mask_base, stride_kn, stride_vn, stride_mk, full, hi, offs_m, N_K, off, c,
        HEAD_DIM, V_DIM, BLOCK_N, ORDER, NP, True, CAUSAL, HAS_MASK, PRECISION,
        PARTIALS)

    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :]
    tl.store(dq_ptrs, (dq * ln2).to(DQ.dtype.element_ty), mask=row_ok[:, None])
    store_partials(PART, bh, pid, gpart, g0, g1, g2, g3, g4, g5, g6, g7, prm, c, ORDER, NP, PARTIALS)


@triton.jit
def _dkdv_loop(dk, dv, k, v, Q, DO, LSE, DELTA, q_base, do_base, row_base,
               stride_qm, stride_dom, lo, hi, offs_n, n_q, off, prm, c,
               HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
               ORDER: tl.constexpr, BOUNDARY: tl.constexpr, PRECISION: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, do, lse, delta = load_query_rows(Q, DO, LSE, DELTA, q_base, do_base, row_base, stride_qm,
                                            stride_dom, offs_m, n_q, HEAD_DIM, V_DIM)
        a_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        x_t, slope_t = seglu2_slope(a_t, prm, c, ORDER)
        p_t = tl.exp2(x_t - lse[None, :])
        if BOUNDARY:  # bottom-right causal: key j is seen by queries i with j <= i + off
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + off, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        g_t = p_t * (dp_t - delta[None, :]) * slope_t
        dk += tl.dot(g_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def mm_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, PRM, MASK,
                       stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                       stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                       stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                       stride_mb, stride_mh, stride_mk, stride_ph,
                       H, N_Q, N_K, c, ln2,
                       HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, ORDER: tl.constexpr, CAUSAL: tl.constexpr,
                       HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    start_n = pid * BLOCK_N
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k, v = load_kv(K, V, b * stride_kb + h * stride_kh, b * stride_vb + h * stride_vh, offs_n,
                   stride_kn, stride_vn, N_K, HEAD_DIM, V_DIM, True)
    # A padded key gets no gradient at all: its rows are zeroed at the end instead of
    # masking every tile (its p may even overflow; `where` drops that).
    key_keep = load_key_keep(MASK, b * stride_mb + h * stride_mh, stride_mk, offs_n, N_K, HAS_MASK)
    prm = PRM + h * stride_ph
    off = N_K - N_Q
    q_base = b * stride_qb + h * stride_qh
    do_base = b * stride_dob + h * stride_doh
    row_base = bh.to(tl.int64) * N_Q
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, V_DIM], dtype=tl.float32)
    if CAUSAL:
        lo, mid = key_block_query_bounds(start_n, N_Q, off, BLOCK_M, BLOCK_N)
        dk, dv = _dkdv_loop(dk, dv, k, v, Q, DO, LSE, DELTA, q_base, do_base, row_base,
                            stride_qm, stride_dom, lo, mid, offs_n, N_Q, off, prm, c,
                            HEAD_DIM, V_DIM, BLOCK_M, ORDER, True, PRECISION)
    else:
        mid = 0
    dk, dv = _dkdv_loop(dk, dv, k, v, Q, DO, LSE, DELTA, q_base, do_base, row_base,
                        stride_qm, stride_dom, mid, N_Q, offs_n, N_Q, off, prm, c,
                        HEAD_DIM, V_DIM, BLOCK_M, ORDER, False, PRECISION)

    store_key_rows(DK, DV, dk, dv, key_keep, b * stride_dkb + h * stride_dkh, b * stride_dvb + h * stride_dvh,
                   offs_n, stride_dkn, stride_dvn, N_K, ln2, HEAD_DIM, V_DIM)
