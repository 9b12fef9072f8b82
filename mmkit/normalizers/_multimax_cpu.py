"""Fused MultiMax forward and backward for CPU, processed in row chunks.

Eager PyTorch runs σ as ~12 separate element-wise passes, each allocating (and
page-faulting) a full-size tensor; that is ~17x softmax on CPU. Here every pass
works on a chunk of rows small enough to stay in cache, writes the probabilities
and the input gradient straight into their outputs, and reduces the parameter
gradients per chunk. Values and gradients equal the reference
``softmax(seglu(x))`` (tests check both, and fp64 gradcheck).

Two identities keep the forward short: ``relu(b - x) = b - min(x, b)`` and
``relu(x - d) = max(x, d) - d``. Expanding the pieces leaves constants that only
shift a row, which softmax ignores.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Elements per chunk: big enough to amortize dispatch, small enough for the cache.
CHUNK_ELEMS = 1 << 18


def _chunks(rows: int, cols: int):
    step = max(1, CHUNK_ELEMS // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _take(p: Tensor, sl: slice) -> Tensor:
    """Rows ``sl`` of a per-row parameter ``[2N, M, 1]``; shared ``[2N, 1, 1]`` as is."""
    return p if p.shape[1] == 1 else p[:, sl]


def _sigma_shifted(x: Tensor, r: Tensor, t: Tensor) -> Tensor:
    """σ(x) up to a per-row constant; ``x`` [m, N], ``r``/``t`` [2N, m|1, 1]."""
    y = torch.addcmul(x, torch.clamp(x, max=r[0]), -t[0])  # x + tb1 relu(b1 - x) - tb1 b1
    y.addcmul_(torch.clamp(x, min=r[1]), t[1])  # + td1 relu(x - d1) + td1 d1
    if r.shape[0] >= 4:  # order 2: t·(b - min(x, b))² = t·m·(m - 2b) + t·b², m = min(x, b)
        m = torch.clamp(x, max=r[2])
        y.addcmul_(m, torch.addcmul(-2 * r[2] * t[2], m, t[2]))
        m = torch.clamp(x, min=r[3])  # t·(max(x, d) - d)² = t·m·(m - 2d) + t·d²
        y.addcmul_(m, torch.addcmul(-2 * r[3] * t[3], m, t[3]))
    for i in range(2, r.shape[0] // 2):
        order = i + 1
        below = torch.sub(r[2 * i], x).clamp_min_(0).pow_(order)
        y.addcmul_(below, t[2 * i])
        above = torch.sub(x, r[2 * i + 1]).clamp_min_(0).pow_(order)
        y.addcmul_(above, t[2 * i + 1])
    return y


class _MultiMaxRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, r: Tensor, t: Tensor, mask: Tensor | None) -> Tensor:
        out = torch.empty_like(x)
        low = torch.finfo(x.dtype).min
        for sl in _chunks(*x.shape):
            xc = x[sl]
            if mask is not None:
                xc = xc.masked_fill(~mask[sl], 0.0)  # σ(-inf) would be NaN
            y = _sigma_shifted(xc, _take(r, sl), _take(t, sl))
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
        pieces = r.shape[0]
        for sl in _chunks(*x.shape):
            xc = x[sl]
            if mask is not None:
                xc = xc.masked_fill(~mask[sl], 0.0)
            rc, tc = _take(r, sl), _take(t, sl)
            gy = gx[sl]
            torch._softmax_backward_data(grad[sl], p[sl], -1, x.dtype, grad_input=gy)
            updates = []
            for j in range(pieces):
                order, below = j // 2 + 1, j % 2 == 0
                u = (torch.sub(rc[j], xc) if below else torch.sub(xc, rc[j])).clamp_min_(0)
                if order == 1:
                    w = gy * (u > 0)
                    g_t = _dot(gy, u, per_row)
                else:
                    w = gy * (u if order == 2 else u.pow(order - 1))
                    g_t = _dot(w, u, per_row)
                coef = order * tc[j]  # d piece / d x = ∓ order·t·u^(order-1)
                g_r = _sum(w, per_row) * (coef if below else -coef)
                updates.append((w, -coef if below else coef))
                _accumulate(gr, j, sl, g_r, per_row)
                _accumulate(gt, j, sl, g_t, per_row)
            for w, c in updates:  # gy is read above, so update it last
                gy.addcmul_(w, c)
        return gx, gr, gt, None


def _dot(a: Tensor, b: Tensor, per_row: bool) -> Tensor:
    return torch.linalg.vecdot(a, b).unsqueeze(-1) if per_row else torch.dot(a.view(-1), b.view(-1))


def _sum(a: Tensor, per_row: bool) -> Tensor:
    return a.sum(-1, keepdim=True) if per_row else a.sum()


def _accumulate(dst: Tensor, j: int, sl: slice, value: Tensor, per_row: bool) -> None:
    if per_row:
        dst[j, sl] = value
    else:
        dst[j] += value


def multimax_rows(x: Tensor, r: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """MultiMax along the last dim of ``x`` [M, N]; ``r``/``t`` [2N, M|1, 1]; ``mask`` [M, N]."""
    x = x.contiguous()
    if mask is not None:
        mask = mask.contiguous()
    return _MultiMaxRows.apply(x, r, t, mask)
