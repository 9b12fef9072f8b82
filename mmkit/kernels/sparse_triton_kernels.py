"""Triton row kernels of the sparse normalizers (sparsemax, 1.5-entmax, α-entmax).

Each program takes a ``[BLOCK_M, BLOCK_N]`` tile of whole rows (``BLOCK_N`` covers
the row), so every row sits in registers and each pass over it is a reduction.
The domain is the one of :mod:`mmkit.normalizers._sparse`: ``X = (α-1) x - max((α-1) x)`` over the
kept entries, where the threshold ``τ`` lies in ``[-1, -n^{-(α-1)}]`` (``n`` kept
entries). Masked entries (mask ``False`` or score ``-inf``) become ``X = -inf`` and
never enter the support.

``KIND`` (a constexpr) selects the normalizer: 0 sparsemax (α = 2), 1 1.5-entmax,
2 α-entmax with α loaded per row (stride 0 for one α).

* Forward: a fixed number of bisection steps on ``f(τ) = Σ [X - τ]_+^β - 1``
  (``β = 1/(α-1)``). Sparsemax and 1.5-entmax then refine ``τ`` exactly: the
  support ``{X > lo}`` of the bisection's lower end holds the true support, and the
  closed form on a support (Michelot's step) moves ``τ`` onto the exact threshold
  in one or two steps. α-entmax has no closed form: ``p`` is normalized by its sum,
  as the torch path and the ``entmax`` package do. Per row the kernel stores the
  shift ``max``, ``τ`` and ``log2 Σp`` so that the backward recomputes ``p`` in fp32.
* Backward: with ``s = p^{2-α}``, ``dx = g∘s - s (Σ g∘s) / Σ s``, and (learnable α)
  the exact per-row ``dL/dα`` of :mod:`mmkit.normalizers.entmax`.

The raw functions are jitted by :func:`kernels`, compiled for CUDA or run by the
Triton interpreter for CPU tensors; ``TRITON_INTERPRET`` is set only while the
interpreted copies are being decorated, so it never leaks into other code.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import triton
import triton.language as tl

# Row reductions go through ``tl.reduce`` with the standard library's combine functions:
# ``tl.sum``/``tl.max`` are themselves jitted functions, which the interpreter can only
# call when ``TRITON_INTERPRET`` was set before ``triton`` was imported, whereas it
# recognises these combine functions and reduces with numpy.
_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max


def _sparse_fwd(x_ptr, y_ptr, m_ptr, a_ptr, stat_ptr,
                n_rows, n_cols, sx_row, sx_col, m_rows_in, sm_out, sm_in, sm_col, sa_row,
                KIND: tl.constexpr, HAS_MASK: tl.constexpr, N_BISECT: tl.constexpr,
                N_REFINE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    cols = tl.arange(0, BLOCK_N)  # [BN]
    row_ok = rows < n_rows
    r64 = rows.to(tl.int64)
    inb = row_ok[:, None] & (cols[None, :] < n_cols)  # [BM, BN]
    keep = inb
    if HAS_MASK:
        m_off = (r64 // m_rows_in) * sm_out + (r64 % m_rows_in) * sm_in
        mk = tl.load(m_ptr + m_off[:, None] + cols[None, :] * sm_col, mask=inb, other=0)
        keep = keep & (mk != 0)
    x = tl.load(x_ptr + r64[:, None] * sx_row + cols[None, :] * sx_col, mask=keep, other=0.0)
    x = x.to(tl.float32)
    keep = keep & (x != float("-inf"))
    if KIND == 0:
        xs = x
        am1 = tl.full([BLOCK_M], 1.0, tl.float32)
    elif KIND == 1:
        xs = x * 0.5
        am1 = tl.full([BLOCK_M], 0.5, tl.float32)
    else:
        am1 = tl.load(a_ptr + r64 * sa_row, mask=row_ok, other=2.0).to(tl.float32) - 1.0
        xs = x * am1[:, None]
    xs = tl.where(keep, xs, float("-inf"))
    n_keep = tl.reduce(keep.to(tl.float32), 1, _SUM)  # [BM]
    mx = tl.where(n_keep > 0, tl.reduce(xs, 1, _MAX), 0.0)
    X = xs - mx[:, None]  # max 0; -inf where masked
    n_safe = tl.maximum(n_keep, 1.0)
    beta = 1.0 / am1
    lo = tl.full([BLOCK_M], -1.0, tl.float32)
    if KIND == 0:
        hi = -1.0 / n_safe
    elif KIND == 1:
        hi = -1.0 / tl.sqrt(n_safe)
    else:
        hi = -tl.exp2(-am1 * tl.log2(n_safe))
    for _ in range(N_BISECT):
        mid = 0.5 * (lo + hi)
        d = tl.maximum(X - mid[:, None], 0.0)
        if KIND == 0:
            p = d
        elif KIND == 1:
            p = d * d
        else:
            p = tl.where(d > 0, tl.exp2(beta[:, None] * tl.log2(tl.maximum(d, 1e-30))), 0.0)
        above = tl.reduce(p, 1, _SUM) >= 1.0  # f(mid) >= 0: the root is at or right of mid
        lo = tl.where(above, mid, lo)
        hi = tl.where(above, hi, mid)
    if KIND == 2:
        # One Newton step from lo (f(lo) >= 0) polishes τ where the bracket is wide
        # next to |τ| (long near-uniform rows); clamped to the bracket.
        d = tl.maximum(X - lo[:, None], 0.0)
        p = tl.where(d > 0, tl.exp2(beta[:, None] * tl.log2(tl.maximum(d, 1e-30))), 0.0)
        f = tl.reduce(p, 1, _SUM) - 1.0
        slope = beta * tl.reduce(tl.where(d > 0, p / tl.maximum(d, 1e-30), 0.0), 1, _SUM)  # -f'(lo)
        tau = tl.minimum(tl.maximum(lo + f / tl.maximum(slope, 1e-30), lo), hi)
        d = tl.maximum(X - tau[:, None], 0.0)
        lp = beta[:, None] * tl.log2(tl.maximum(d, 1e-30))
        p = tl.where(d > 0, tl.exp2(lp), 0.0)
        z = tl.reduce(p, 1, _SUM)
        log2z = tl.where(z > 0, tl.log2(tl.maximum(z, 1e-30)), 0.0)
        p = p / tl.maximum(z, 1e-30)[:, None]
    else:
        tau = lo  # {X > lo} holds the support; each closed-form step drops what lies below τ
        for _ in range(N_REFINE):
            supp = X > tau[:, None]
            cnt = tl.maximum(tl.reduce(supp.to(tl.float32), 1, _SUM), 1.0)
            total = tl.reduce(tl.where(supp, X, 0.0), 1, _SUM)
            if KIND == 0:
                t_new = (total - 1.0) / cnt
            else:
                mean = total / cnt
                dev = tl.where(supp, X - mean[:, None], 0.0)
                delta = 1.0 / cnt - tl.reduce(dev * dev, 1, _SUM) / cnt
                t_new = mean - tl.sqrt(tl.maximum(delta, 0.0))
            tau = tl.minimum(tl.maximum(t_new, lo), hi)
        d = tl.maximum(X - tau[:, None], 0.0)
        if KIND == 0:
            p = d
        else:
            p = d * d
        log2z = tl.full([BLOCK_M], 0.0, tl.float32)
    y_off = r64[:, None] * n_cols + cols[None, :]
    tl.store(y_ptr + y_off, p.to(y_ptr.dtype.element_ty), mask=inb)
    tl.store(stat_ptr + r64, mx, mask=row_ok)
    tl.store(stat_ptr + n_rows + r64, tau, mask=row_ok)
    tl.store(stat_ptr + 2 * n_rows + r64, log2z, mask=row_ok)


def _sparse_bwd(x_ptr, g_ptr, dx_ptr, m_ptr, a_ptr, stat_ptr, da_ptr,
                n_rows, n_cols, sx_row, sx_col, sg_row, sg_col,
                m_rows_in, sm_out, sm_in, sm_col, sa_row,
                KIND: tl.constexpr, HAS_MASK: tl.constexpr, NEED_DA: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    cols = tl.arange(0, BLOCK_N)  # [BN]
    row_ok = rows < n_rows
    r64 = rows.to(tl.int64)
    inb = row_ok[:, None] & (cols[None, :] < n_cols)  # [BM, BN]
    keep = inb
    if HAS_MASK:
        m_off = (r64 // m_rows_in) * sm_out + (r64 % m_rows_in) * sm_in
        mk = tl.load(m_ptr + m_off[:, None] + cols[None, :] * sm_col, mask=inb, other=0)
        keep = keep & (mk != 0)
    x = tl.load(x_ptr + r64[:, None] * sx_row + cols[None, :] * sx_col, mask=keep, other=0.0)
    x = x.to(tl.float32)
    keep = keep & (x != float("-inf"))
    g = tl.load(g_ptr + r64[:, None] * sg_row + cols[None, :] * sg_col, mask=keep, other=0.0)
    g = g.to(tl.float32)
    mx = tl.load(stat_ptr + r64, mask=row_ok, other=0.0)
    tau = tl.load(stat_ptr + n_rows + r64, mask=row_ok, other=0.0)
    # Recompute X and d exactly as the forward did (same fp32 operations).
    if KIND == 0:
        xs = x
    elif KIND == 1:
        xs = x * 0.5
    else:
        am1 = tl.load(a_ptr + r64 * sa_row, mask=row_ok, other=2.0).to(tl.float32) - 1.0
        xs = x * am1[:, None]
    X = tl.where(keep, xs, float("-inf")) - mx[:, None]
    d = tl.maximum(X - tau[:, None], 0.0)
    supp = d > 0
    if KIND == 0:
        s = supp.to(tl.float32)
    elif KIND == 1:
        s = d  # s = p^(1/2)
    else:
        log2z = tl.load(stat_ptr + 2 * n_rows + r64, mask=row_ok, other=0.0)
        lp = (1.0 / am1)[:, None] * tl.log2(tl.maximum(d, 1e-30)) - log2z[:, None]  # log2 p
        p = tl.where(supp, tl.exp2(lp), 0.0)
        s = tl.where(supp, tl.exp2((1.0 - am1)[:, None] * lp), 0.0)  # p^(2-α)
    gs = g * s
    q = tl.reduce(gs, 1, _SUM) / tl.maximum(tl.reduce(s, 1, _SUM), 1e-30)  # Σ g s / Σ s
    dx = gs - s * q[:, None]
    dx_off = r64[:, None] * n_cols + cols[None, :]
    tl.store(dx_ptr + dx_off, dx.to(dx_ptr.dtype.element_ty), mask=inb)
    if NEED_DA:
        # dL/dα = (Σ g p - q) / (α-1)² - (Σ g p ln p - q Σ p ln p) / (α-1)
        plogp = tl.where(supp, p * lp * 0.6931471805599453, 0.0)
        gp = tl.reduce(g * p, 1, _SUM)
        gplogp = tl.reduce(g * plogp, 1, _SUM)
        s_plogp = tl.reduce(plogp, 1, _SUM)
        da = (gp - q) / (am1 * am1) - (gplogp - q * s_plogp) / am1
        tl.store(da_ptr + r64, da, mask=row_ok)


def _jit_all(interpret: bool) -> SimpleNamespace:
    return SimpleNamespace(fwd=triton.jit(_sparse_fwd), bwd=triton.jit(_sparse_bwd), interpret=interpret)


@functools.lru_cache(maxsize=2)
def kernels(interpret: bool) -> SimpleNamespace:
    """The jitted kernels: compiled (``interpret=False``) or for the Triton interpreter."""
    if not interpret:
        return _jit_all(False)
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # read by triton.jit while it decorates
    try:
        return _jit_all(True)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


@functools.lru_cache(maxsize=64)
def launch_config(n_cols: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)`` for rows of ``n_cols`` entries: whole rows, about
    2048 entries a program and 16 a thread (32 from ``N > 8192``), so nothing spills."""
    block_n = max(16, triton.next_power_of_2(n_cols))
    block_m = max(1, min(64, 2048 // block_n))
    num_warps = min(16, max(4, block_m * block_n // 512))
    return block_m, block_n, num_warps
