"""α-EntMax for any α > 1, fixed or learnable (optionally one α per head).

The threshold is the root of the decreasing function ``f(τ) = Σ [X - τ]_+^β - 1``
(``β = 1/(α-1)``, ``X`` scaled and shifted, see :mod:`._sparse`), bracketed by
``[-1, 0]``. The ``entmax`` package bisects 50 times; we take safeguarded Newton
steps from the left end, which converge monotonically (``f`` is convex for
α <= 2) and quadratically, and fall back to bisection when a step leaves the
bracket. Like the sort-based ones, the search runs on each row's top-k entries,
widened where the support fills them. The gradient with respect to α is exact:
with ``s = p^(2-α)``, ``dp/dα = (p - s/Σs)/(α-1)² - (p ln p - (s/Σs) Σ p ln p)/(α-1)``,
from differentiating ``p_i = [(α-1) x_i - τ]^{1/(α-1)}`` with ``Σ p`` held at 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..kernels.rows import check_dim, to_rows
from ..kernels.sparse_triton import triton_entmax_bisect, use_triton
from ._sparse import apply_mask, scaled_shifted, topk_threshold
from .base import Normalizer, check_mask, compute_dtype, no_autocast, per_head_view
from .losses import fenchel_young_loss


def _threshold(X: Tensor, beta: Tensor, max_iter: int) -> Tensor:
    """Root ``τ`` [M, 1] of ``Σ [X - τ]_+^β = 1`` for rows ``X`` [M, N] with max 0."""
    lo = X.new_full((X.shape[0], 1), -1.0)
    hi = X.new_zeros((X.shape[0], 1))
    tau = lo.clone()
    tol = 1e-6 if X.dtype == torch.float32 else 1e-13
    for _ in range(max_iter):
        d = (X - tau).clamp_min_(0)
        p = d.pow(beta)
        f = p.sum(-1, keepdim=True) - 1.0
        if float(f.abs().max()) <= tol:
            break
        slope = -beta * (p / torch.where(d > 0, d, 1.0)).sum(-1, keepdim=True)  # f'(τ) < 0
        lo = torch.where(f > 0, tau, lo)
        hi = torch.where(f > 0, hi, tau)
        step = tau - f / slope
        tau = torch.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
    return tau


class _EntmaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, mask: Tensor | None, max_iter: int) -> Tensor:
        # x: [M, N]; alpha: [M, 1] or [1, 1]
        am1 = alpha - 1.0
        X = scaled_shifted(x, am1, mask)
        beta = 1.0 / am1

        def prefix(z: Tensor, rows: Tensor | None) -> tuple[Tensor, Tensor]:
            b = beta if rows is None or beta.shape[0] == 1 else beta[rows]
            tau = _threshold(z, b, max_iter)
            return tau, (z > tau).sum(-1, keepdim=True)

        # Entries outside the top k are zero once the k-th one is below τ (see _sparse).
        tau, _ = topk_threshold(X, prefix, k=64)
        p = X.sub_(tau).clamp_min_(0).pow_(beta)
        p = apply_mask(p / p.sum(-1, keepdim=True), mask)
        ctx.save_for_backward(p, alpha)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        p, alpha = ctx.saved_tensors
        am1 = alpha - 1.0
        supp = p > 0
        # s = p^(2-α) on the support; Jacobian in x: diag(s) - s sᵀ / Σs.
        s = torch.where(supp, torch.where(supp, p, 1.0).pow(2.0 - alpha), 0.0)
        s_sum = s.sum(-1, keepdim=True).clamp_min(1e-30)
        gs = grad * s
        gx = gs - s * (gs.sum(-1, keepdim=True) / s_sum)
        g_alpha = None
        if ctx.needs_input_grad[1]:
            # dp/dα = (p - s/Σs)/(α-1)² - (p ln p - (s/Σs)·Σ p ln p)/(α-1)
            plogp = torch.where(supp, p * torch.where(supp, p, 1.0).log(), 0.0)
            skew = s / s_sum
            dp = (p - skew) / am1**2 - (plogp - skew * plogp.sum(-1, keepdim=True)) / am1
            g_alpha = (grad * dp).sum(-1, keepdim=True)  # [M, 1]
            if alpha.shape[0] == 1:
                g_alpha = g_alpha.sum(0, keepdim=True)
        return gx, g_alpha, None, None


def entmax_bisect(scores: Tensor, alpha: Tensor | float = 1.5, mask: Tensor | None = None,
                  dim: int = -1, max_iter: int = 50) -> Tensor:
    """α-entmax along ``dim``; ``alpha`` a float or a tensor broadcastable to ``scores``
    that is constant along ``dim`` (e.g. ``[H, 1, 1]`` per head).

    CUDA inputs run the Triton kernels of :mod:`mmkit.kernels.sparse_triton`, which bisect a fixed
    number of steps to fp32 precision and ignore ``max_iter``; the rest the torch path.
    """
    if use_triton(scores, dim):
        return triton_entmax_bisect(scores, alpha, mask, dim)
    dim = check_dim(scores, dim)
    mask = check_mask(scores, mask)
    with no_autocast(scores):
        cdtype = compute_dtype(scores)
        x, back = to_rows(scores.to(cdtype), dim)
        a = torch.as_tensor(alpha, dtype=cdtype, device=scores.device)
        if bool((a <= 1).any()):
            raise ValueError(f"alpha must be > 1, got {alpha}")
        if a.numel() == 1:
            a = a.reshape(1, 1)
        else:
            shape = list(scores.shape)
            shape[dim] = 1
            a = to_rows(a.expand(shape), dim)[0]  # [M, 1]
        m = None if mask is None else to_rows(mask.expand(scores.shape), dim)[0]
        return back(_EntmaxFn.apply(x, a, m, max_iter)).to(scores.dtype)


class Entmax(Normalizer):
    """α-EntMax (α = 1: softmax, 1.5: entmax15, 2: sparsemax).

    Args:
        alpha: the (initial) α > 1. A learnable α must lie in (1, 2).
        learnable: learn α as ``1 + sigmoid(z)``.
        num_heads: with ``learnable``, one α per head; scores ``[..., H, Nq, Nk]``.
        max_iter: the most Newton/bisection steps of the threshold search.
    """

    def __init__(self, alpha: float = 1.5, learnable: bool = False, num_heads: int | None = None,
                 max_iter: int = 50) -> None:
        super().__init__()
        if not alpha > 1:
            raise ValueError(f"alpha must be > 1, got {alpha}")
        if learnable and not alpha < 2:
            raise ValueError(f"a learnable alpha = 1 + sigmoid(z) lies in (1, 2), got {alpha}")
        if num_heads is not None and (not learnable or num_heads < 1):
            raise ValueError("num_heads needs learnable=True and num_heads >= 1")
        self.learnable, self.num_heads, self.max_iter = learnable, num_heads, max_iter
        self._alpha = float(alpha)
        if learnable:
            z0 = math.log((alpha - 1) / (2 - alpha))  # sigmoid(z0) = alpha - 1
            self.alpha_logit = nn.Parameter(torch.full((num_heads or 1,), z0))

    @property
    def alpha(self) -> Tensor:
        if not self.learnable:
            return torch.tensor(self._alpha)
        return 1.0 + torch.sigmoid(self.alpha_logit)

    def _alpha_for(self, scores: Tensor, dim: int) -> Tensor | float:
        if not self.learnable:
            return self._alpha
        a = self.alpha.to(compute_dtype(scores))
        return per_head_view(a, scores, dim) if self.num_heads else a.reshape(())

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        dim = check_dim(scores, dim)
        return entmax_bisect(scores, self._alpha_for(scores, dim), mask, dim, self.max_iter)

    def loss(self, logits: Tensor, target: Tensor, *, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        if self.num_heads:
            raise ValueError("a per-head Entmax cannot be used as an output-layer loss")
        alpha = self.alpha.to(logits.device).reshape(()) if self.learnable else self._alpha
        a_det = alpha.detach() if isinstance(alpha, Tensor) else alpha
        return fenchel_young_loss(logits, target, lambda z: entmax_bisect(z, a_det, max_iter=self.max_iter),
                                  alpha, ignore_index=ignore_index,
                                  label_smoothing=label_smoothing, reduction=reduction)

    def extra_repr(self) -> str:
        return f"alpha={self._alpha}, learnable={self.learnable}, num_heads={self.num_heads}"
