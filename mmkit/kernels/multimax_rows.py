"""Fused MultiMax forward and backward for CPU, processed in row chunks.

Eager PyTorch runs σ as ~12 separate element-wise passes, each allocating (and
page-faulting) a full-size tensor; that is ~20x softmax on CPU. Here every pass
works on a chunk of rows small enough to stay in cache, the probabilities and
the input gradient are written straight into their outputs, and the parameter
gradients are reduced per chunk. Shared parameters travel as Python floats (no
tiny tensor ops per chunk); per-head ones as per-row ``[m, 1]`` columns. Values
and gradients equal the reference ``softmax(seglu(x))`` (tests check both, and
fp64 gradcheck).

Identities that save passes: ``relu(b - x) = b - min(x, b)``,
``relu(x - d) = max(x, d) - d``, ``(b - m)² = m (m - 2b) + b²``; the constants
they leave only shift a row, which softmax ignores. In the backward,
``Σ g·relu(b - x) = b·Σ g[x<b] - <g[x<b], x>`` reuses the masked gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Elements per chunk: big enough to amortize dispatch, small enough for the cache.
CHUNK_ELEMS = 1 << 18

Scalar = float | Tensor  # a Python float (shared parameter) or an [m, 1] column (per row)


def _chunks(rows: int, cols: int):
    step = max(1, CHUNK_ELEMS // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _axpy(y: Tensor, w: Tensor, c: Scalar) -> Tensor:
    """``y += c * w`` in place."""
    return y.add_(w, alpha=c) if isinstance(c, float) else y.addcmul_(w, c)


def _sum(a: Tensor, per_row: bool) -> Tensor:
    return a.sum(-1, keepdim=True) if per_row else a.sum()


def _dot(a: Tensor, b: Tensor, per_row: bool) -> Tensor:
    return torch.linalg.vecdot(a, b).unsqueeze(-1) if per_row else torch.dot(a.view(-1), b.view(-1))


def _sigma_shifted(x: Tensor, r: list[Scalar], t: list[Scalar]) -> Tensor:
    """σ(x) up to a per-row constant, for a chunk ``x`` [m, N]."""
    y = _axpy(x.clone(), torch.clamp(x, max=r[0]), -t[0])  # + tb1·relu(b1 - x) - tb1·b1
    _axpy(y, torch.clamp(x, min=r[1]), t[1])  # + td1·relu(x - d1) + td1·d1
    if len(r) >= 4:  # order 2: t·relu(b - x)² = t·m·(m - 2b) + t·b² with m = min(x, b)
        for j, m in ((2, torch.clamp(x, max=r[2])), (3, torch.clamp(x, min=r[3]))):
            y.addcmul_(m, torch.sub(m, 2 * r[j]).mul_(t[j]))
    for j in range(4, len(r)):
        order = j // 2 + 1
        piece = torch.sub(r[j], x) if j % 2 == 0 else torch.sub(x, r[j])
        _axpy(y, piece.clamp_min_(0).pow_(order), t[j])
    return y


class _MultiMaxRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, r: Tensor, t: Tensor, mask: Tensor | None) -> Tensor:
        out = torch.empty_like(x)
        low = torch.finfo(x.dtype).min
        for sl, xc, rc, tc in _walk(x, r, t, mask):
            y = _sigma_shifted(xc, rc, tc)
            if mask is not None:
                y.masked_fill_(~mask[sl], low)
            torch._softmax(y, -1, False, out=out[sl])
            if mask is not None:
                out[sl].mul_(mask[sl])
        ctx.save_for_backward(x, r, t, out, mask)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, r, t, p, mask = ctx.saved_tensors
        grad = grad.contiguous()
        gx = torch.empty_like(x)
        per_row = r.shape[1] != 1
        gr = torch.zeros_like(r)
        gt = torch.zeros_like(t)
        for sl, xc, rc, tc in _walk(x, r, t, mask):
            gy = gx[sl]  # gradient w.r.t. σ(x); turned into the one w.r.t. x below
            torch._softmax_backward_data(grad[sl], p[sl], -1, x.dtype, grad_input=gy)
            updates = []
            for j in range(len(rc)):
                order, below = j // 2 + 1, j % 2 == 0
                if order == 1:  # w = g·[x < b] (or [x > d]); Σ g·relu(±(b - x)) from <w, x>
                    # Comparisons written into a float buffer: bool tensors are slow paths on CPU.
                    ind = torch.empty_like(xc)
                    (torch.lt if below else torch.gt)(xc, rc[j], out=ind)
                    w = ind.mul_(gy)
                    w_sum, w_x = _sum(w, per_row), _dot(w, xc, per_row)
                    g_t = rc[j] * w_sum - w_x if below else w_x - rc[j] * w_sum
                else:  # u = relu(±(b - x)), w = g·u^(order-1); Σ g·u^order = <w, u>
                    u = (torch.sub(rc[j], xc) if below else torch.sub(xc, rc[j])).clamp_min_(0)
                    w = gy * (u if order == 2 else u.pow(order - 1))
                    w_sum, g_t = _sum(w, per_row), _dot(w, u, per_row)
                coef = order * tc[j]  # dσ/dx of the piece is ∓coef·u^(order-1)
                g_r = w_sum * (coef if below else -coef)
                updates.append((w, -coef if below else coef))
                if per_row:
                    gr[j, sl], gt[j, sl] = g_r, g_t
                else:
                    gr[j] += g_r
                    gt[j] += g_t
            for w, c in updates:  # every w read gy first, so update it last
                _axpy(gy, w, c)
        return gx, gr, gt, None


def _walk(x: Tensor, r: Tensor, t: Tensor, mask: Tensor | None):
    """Yield ``(rows, x chunk, ranges, ts)`` with parameters as floats or [m, 1] columns."""
    per_row = r.shape[1] != 1
    shared_r = None if per_row else [float(v) for v in r.view(-1).tolist()]
    shared_t = None if per_row else [float(v) for v in t.view(-1).tolist()]
    for sl in _chunks(*x.shape):
        xc = x[sl]
        if mask is not None:
            xc = xc.masked_fill(~mask[sl], 0.0)  # σ(-inf) would be NaN; the mask zeroes these
        if per_row:
            yield sl, xc, list(r[:, sl]), list(t[:, sl])
        else:
            yield sl, xc, shared_r, shared_t


def multimax_rows(x: Tensor, r: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """MultiMax along the last dim of ``x`` [M, N]; ``r``/``t`` [2N, M|1, 1]; ``mask`` [M, N]."""
    x = x.contiguous()
    if mask is not None:
        mask = mask.contiguous()
    return _MultiMaxRows.apply(x, r, t, mask)
