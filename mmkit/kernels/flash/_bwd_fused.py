"""One-pass backward of MultiMax flash attention (opt-in: ``BlockConfig.fused_bwd``).

The two-kernel backward (``_bwd``) recomputes ``a = q·k``, σ, σ′ and ``p`` twice:
once in the dq kernel, once in the dk/dv kernel. Here they are computed once:

* ``mm_bwd_delta_kernel`` stores ``Δ = rowsum(dO∘O)`` and zeroes the fp32 dq
  accumulator (one small launch, like FlashAttention-2's preprocess);
* ``mm_bwd_fused_kernel`` (one program per key block) walks the query blocks that see
  its keys and, from one ``dσ`` tile, accumulates ``dk``, ``dv`` and the SegLU
  parameter partials in registers and adds the tile's ``dq`` contribution
  ``[BLOCK_M, HEAD_DIM]`` to the accumulator with one ``tl.atomic_add`` per tile
  (per output element per tile, as FlashAttention-2 does; never per score).

The atomics make ``dq`` depend on the order of the additions (not bitwise
reproducible); ``flash_backward`` therefore uses the two-kernel backward whenever
``torch.are_deterministic_algorithms_enabled()``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._bwd import (
    accumulate_partials,
    key_block_query_bounds,
    load_query_rows,
    store_key_rows,
    store_partials,
)
from ._common import load_key_keep, load_kv, seglu2_slope


@triton.jit
def mm_bwd_delta_kernel(DO, OUT, DELTA, DQACC, stride_dob, stride_doh, stride_dom,
                        stride_ob, stride_oh, stride_om, H, N_Q,
                        HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """``Δ [B·H, Nq]`` and a zeroed ``DQACC [B·H, Nq, HEAD_DIM]`` (fp32, contiguous)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = tl.arange(0, V_DIM)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_v[None, :],
                 mask=row_ok[:, None], other=0.0)
    o = tl.load(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_v[None, :],
                mask=row_ok[:, None], other=0.0)
    row = bh.to(tl.int64) * N_Q + offs_m
    tl.store(DELTA + row, tl.sum(do.to(tl.float32) * o.to(tl.float32), 1), mask=row_ok)
    tl.store(DQACC + row[:, None] * HEAD_DIM + offs_d[None, :],
             tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32), mask=row_ok[:, None])


@triton.jit
def _fused_loop(dk, dv, gpart, g0, g1, g2, g3, g4, g5, g6, g7, k, v, key_keep,
                Q, DO, LSE, DELTA, DQACC, q_base, do_base, row_base, stride_qm, stride_dom,
                lo, hi, offs_n, n_q, off, prm, c, ln2,
                HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                ORDER: tl.constexpr, NP: tl.constexpr, BOUNDARY: tl.constexpr,
                KEY_MASK: tl.constexpr, PRECISION: tl.constexpr, PARTIALS: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, do, lse, delta = load_query_rows(Q, DO, LSE, DELTA, q_base, do_base, row_base, stride_qm,
                                            stride_dom, offs_m, n_q, HEAD_DIM, V_DIM)
        a_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        x_t, slope_t = seglu2_slope(a_t, prm, c, ORDER)
        p_t = tl.exp2(x_t - lse[None, :])
        if KEY_MASK:
            p_t = tl.where(key_keep[:, None], p_t, 0.0)
        if BOUNDARY:  # bottom-right causal: key j is seen by queries i with j <= i + off
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + off, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # [BLOCK_N, BLOCK_M]
        dsig_t = p_t * (dp_t - delta[None, :])  # gradient w.r.t. σ(s)
        g_t = (dsig_t * slope_t).to(q.dtype)
        dk += tl.dot(g_t, q, input_precision=PRECISION)
        dq = tl.dot(tl.trans(g_t), k, input_precision=PRECISION)  # [BLOCK_M, HEAD_DIM]
        # relaxed: the additions need no ordering among themselves; the kernel's end
        # makes them visible to the cast that follows
        tl.atomic_add(DQACC + (row_base + offs_m)[:, None] * HEAD_DIM + offs_d[None, :], dq * ln2,
                      mask=(offs_m < n_q)[:, None], sem="relaxed")
        gpart, g0, g1, g2, g3, g4, g5, g6, g7 = accumulate_partials(
            gpart, g0, g1, g2, g3, g4, g5, g6, g7, dsig_t, a_t, prm, ORDER, NP, PARTIALS)
    return dk, dv, gpart, g0, g1, g2, g3, g4, g5, g6, g7


@triton.jit
def mm_bwd_fused_kernel(Q, K, V, DO, LSE, DELTA, DQACC, DK, DV, PART, PRM, MASK,
                        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                        stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                        stride_mb, stride_mh, stride_mk, stride_ph,
                        H, N_Q, N_K, c, ln2,
                        HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, ORDER: tl.constexpr, NP: tl.constexpr,
                        CAUSAL: tl.constexpr, KEY_MASK: tl.constexpr, HAS_MASK: tl.constexpr,
                        PRECISION: tl.constexpr, PARTIALS: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    start_n = pid * BLOCK_N
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k, v = load_kv(K, V, b * stride_kb + h * stride_kh, b * stride_vb + h * stride_vh, offs_n,
                   stride_kn, stride_vn, N_K, HEAD_DIM, V_DIM, True)
    # Padded keys and keys past Nk feed neither dq nor the parameter sums.
    key_keep = load_key_keep(MASK, b * stride_mb + h * stride_mh, stride_mk, offs_n, N_K, HAS_MASK)
    key_keep = key_keep & (offs_n < N_K)
    prm = PRM + h * stride_ph
    off = N_K - N_Q
    q_base = b * stride_qb + h * stride_qh
    do_base = b * stride_dob + h * stride_doh
    row_base = bh.to(tl.int64) * N_Q
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, V_DIM], dtype=tl.float32)
    gpart = tl.zeros([BLOCK_N, NP], dtype=tl.float32)
    g0 = tl.zeros([BLOCK_N], dtype=tl.float32)
    g1, g2, g3, g4, g5, g6, g7 = g0, g0, g0, g0, g0, g0, g0
    if CAUSAL:
        lo, mid = key_block_query_bounds(start_n, N_Q, off, BLOCK_M, BLOCK_N)
        dk, dv, gpart, g0, g1, g2, g3, g4, g5, g6, g7 = _fused_loop(
            dk, dv, gpart, g0, g1, g2, g3, g4, g5, g6, g7, k, v, key_keep,
            Q, DO, LSE, DELTA, DQACC, q_base, do_base, row_base, stride_qm, stride_dom,
            lo, mid, offs_n, N_Q, off, prm, c, ln2,
            HEAD_DIM, V_DIM, BLOCK_M, ORDER, NP, True, KEY_MASK, PRECISION, PARTIALS)
    else:
        mid = 0
    dk, dv, gpart, g0, g1, g2, g3, g4, g5, g6, g7 = _fused_loop(
        dk, dv, gpart, g0, g1, g2, g3, g4, g5, g6, g7, k, v, key_keep,
        Q, DO, LSE, DELTA, DQACC, q_base, do_base, row_base, stride_qm, stride_dom,
        mid, N_Q, offs_n, N_Q, off, prm, c, ln2,
        HEAD_DIM, V_DIM, BLOCK_M, ORDER, NP, False, KEY_MASK, PRECISION, PARTIALS)

    store_key_rows(DK, DV, dk, dv, key_keep, b * stride_dkb + h * stride_dkh, b * stride_dvb + h * stride_dvh,
                   offs_n, stride_dkn, stride_dvn, N_K, ln2, HEAD_DIM, V_DIM)
    store_partials(PART, bh, pid, gpart, g0, g1, g2, g3, g4, g5, g6, g7, prm, c, ORDER, NP, PARTIALS)
