"""Forward Triton kernel of MultiMax flash attention (FlashAttention-2 online softmax).

One program per (query block, batch·head). It walks the key blocks that its rows can
see, first the ones that need no bound/causal mask, then the boundary ones; σ is
applied in registers before any mask (σ never sees ``-inf``), and the running max /
sum / output accumulator are updated in the log2 domain. It stores ``O`` (input
dtype) and the row log-sum-exp in log2 units (fp32, ``+inf`` for rows with no key,
whose output is 0).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import keep_tile, load_key_keep, load_kv, query_key_bounds, seglu2


@triton.jit
def _fwd_loop(acc, l_i, m_i, q, K, V, MASK, prm, k_base, v_base, mask_base,
              stride_kn, stride_vn, stride_mk, lo, hi, offs_m, n_k, off, c,
              HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
              ORDER: tl.constexpr, BOUNDARY: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k, v = load_kv(K, V, k_base, v_base, offs_n, stride_kn, stride_vn, n_k, HEAD_DIM, V_DIM, BOUNDARY)
        a = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # [BLOCK_M, BLOCK_N] raw q·k
        x = seglu2(a, prm, c, ORDER)  # σ before the mask
        key_keep = load_key_keep(MASK, mask_base, stride_mk, offs_n, n_k, HAS_MASK)
        keep = keep_tile(offs_m, offs_n, n_k, off, key_keep, BOUNDARY, CAUSAL, HAS_MASK)
        if BOUNDARY:
            x = tl.where(keep, x, float("-inf"))
        elif HAS_MASK:
            x = tl.where(keep, x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(x - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def mm_fwd_kernel(Q, K, V, OUT, LSE, PRM, MASK,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                  stride_mb, stride_mh, stride_mk, stride_ph,
                  H, N_Q, N_K, c,
                  HEAD_DIM: tl.constexpr, V_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, ORDER: tl.constexpr, CAUSAL: tl.constexpr,
                  HAS_MASK: tl.constexpr, PRECISION: tl.constexpr):
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

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    prm = PRM + h * stride_ph
    off = N_K - N_Q
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, V_DIM], dtype=tl.float32)
    full, hi = query_key_bounds(start_m, N_K, off, BLOCK_M, BLOCK_N, CAUSAL)
    k_base = b * stride_kb + h * stride_kh
    v_base = b * stride_vb + h * stride_vh
    mask_base = b * stride_mb + h * stride_mh
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, K, V, MASK, prm, k_base, v_base, mask_base,
                              stride_kn, stride_vn, stride_mk, 0, full, offs_m, N_K, off, c,
                              HEAD_DIM, V_DIM, BLOCK_N, ORDER, False, CAUSAL, HAS_MASK, PRECISION)
    acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, K, V, MASK, prm, k_base, v_base, mask_base,
                              stride_kn, stride_vn, stride_mk, full, hi, offs_m, N_K, off, c,
                              HEAD_DIM, V_DIM, BLOCK_N, ORDER, True, CAUSAL, HAS_MASK, PRECISION)

    empty = l_i == 0.0  # no key to attend to: output 0, lse +inf (p = 0 in backward)
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_v[None, :]
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, lse, mask=row_ok)
