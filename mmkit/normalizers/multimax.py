"""MultiMax (Zhou, Fritz & Keuper, ICML 2024): ``softmax(σ(x))``.

σ is the SegLU modulator of order N (the paper and the official code use N=2)::

    σ(x) = x + Σ_{n=1..N} t_b⁽ⁿ⁾·max(b⁽ⁿ⁾ - x, 0)ⁿ + t_d⁽ⁿ⁾·max(x - d⁽ⁿ⁾, 0)ⁿ

The parameters follow the official layout: ``ranges = [b1, d1, b2, d2, ...]`` and
``ts = [tb1, td1, tb2, td2, ...]``, both ``trunc_normal(std=0.02)`` at init, so σ
starts close to the identity. With ``num_heads`` each head has its own 2N+2N
scalars (shape ``[H, 2N]``). All of them belong in a no-weight-decay group
(:meth:`MultiMax.no_decay_parameters`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import kernels
from ..kernels.multimax_rows import multimax_rows
from ..kernels.rows import check_dim, to_rows
from .base import (
    FusedForm,
    Normalizer,
    check_mask,
    compute_dtype,
    masked_softmax,
    no_autocast,
    per_head_view,
)
from .losses import cross_entropy


def seglu(x: Tensor, ranges: Tensor, ts: Tensor) -> Tensor:
    """The reference SegLU σ(x), differentiable by autograd.

    ``ranges`` and ``ts`` have ``2N`` entries on their first dim, each broadcastable
    to ``x`` (scalars, or e.g. ``[H, 1, 1]`` per head).
    """
    y = x
    for i in range(ranges.shape[0] // 2):
        order = i + 1
        below = torch.relu(ranges[2 * i] - x)
        above = torch.relu(x - ranges[2 * i + 1])
        if order > 1:
            below, above = below**order, above**order
        y = y + ts[2 * i] * below + ts[2 * i + 1] * above
    return y


class MultiMax(Normalizer):
    """MultiMax: softmax of the learnable SegLU modulation σ.

    Args:
        order: N, the highest power of the SegLU pieces (2 in the paper).
        num_heads: one set of parameters per head; scores ``[..., H, Nq, Nk]``.
        init_std: std of the truncated-normal init of ``ranges`` and ``ts``.
        fused: on CPU, use the row-chunked fused forward/backward of
            :mod:`mmkit.kernels.multimax_rows` (same values and gradients as the reference
            ``softmax(seglu(x))``, much faster) unless its ``"multimax_rows"`` switch is off.
    """

    is_modulated_softmax = True
    fused_form_guards = (*Normalizer.fused_form_guards, "_params", "_forward_fused")

    def __init__(self, order: int = 2, num_heads: int | None = None, init_std: float = 0.02,
                 fused: bool = True) -> None:
        super().__init__()
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if num_heads is not None and num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.order, self.num_heads, self.fused = order, num_heads, fused
        shape = (2 * order,) if num_heads is None else (num_heads, 2 * order)
        self.ranges = nn.Parameter(torch.empty(shape))
        self.ts = nn.Parameter(torch.empty(shape))
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02) -> None:
        for p in (self.ranges, self.ts):
            if std > 0:
                nn.init.trunc_normal_(p, std=std)
            else:
                nn.init.zeros_(p)

    def _params(self, scores: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        """``ranges``/``ts`` as ``[2N, ...]`` tensors broadcastable to ``scores``."""
        dtype = compute_dtype(scores)
        r, t = self.ranges.to(dtype), self.ts.to(dtype)
        if self.num_heads is None:
            return r.view(-1, *([1] * scores.ndim)), t.view(-1, *([1] * scores.ndim))
        return per_head_view(r.t(), scores, dim), per_head_view(t.t(), scores, dim)  # [2N, H, 1, 1]

    def _fused_form(self) -> FusedForm:
        """SegLU with the parameters themselves (``[2N]``, or ``[H, 2N]`` per head); ``fused``
        only picks this module's own CPU implementation and does not change the maths."""
        return FusedForm("seglu", ranges=self.ranges, ts=self.ts, order=self.order)

    def modulate(self, scores: Tensor) -> Tensor:
        """σ(scores) (the whole tensor; with ``num_heads``, heads third from last)."""
        r, t = self._params(scores, scores.ndim - 1)
        return seglu(scores.to(compute_dtype(scores)), r, t)

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        dim = check_dim(scores, dim)
        mask = check_mask(scores, mask)
        with no_autocast(scores):
            x = scores.to(compute_dtype(scores))
            r, t = self._params(x, dim)
            if self.fused and x.device.type == "cpu" and kernels.enabled("multimax_rows"):
                return self._forward_fused(x, r, t, mask, dim).to(scores.dtype)
            if mask is not None:  # σ(-inf) is NaN: feed σ a finite value, the mask zeroes it
                x = x.masked_fill(~mask, 0.0)
            return masked_softmax(seglu(x, r, t), mask, dim).to(scores.dtype)

    def _forward_fused(self, x: Tensor, r: Tensor, t: Tensor, mask: Tensor | None,
                       dim: int) -> Tensor:
        rows, back = to_rows(x, dim)  # [M, N]
        shape = list(x.shape)
        shape[dim] = 1

        def per_row(p: Tensor) -> Tensor:  # [2N, ...] -> [2N, M, 1] or [2N, 1, 1]
            if self.num_heads is None:
                return p.reshape(p.shape[0], 1, 1)
            return torch.stack([to_rows(q.expand(shape), dim)[0] for q in p])

        m = None if mask is None else to_rows(mask.expand(x.shape), dim)[0]
        return back(multimax_rows(rows, per_row(r), per_row(t), m))

    def loss(self, logits: Tensor, target: Tensor, *, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        """Cross-entropy on σ(logits) (the paper's output-layer MultiMax)."""
        if self.num_heads:
            raise ValueError("a per-head MultiMax cannot be used as an output-layer loss")
        return cross_entropy(self.modulate(logits), target, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, reduction=reduction)

    def extra_repr(self) -> str:
        return f"order={self.order}, num_heads={self.num_heads}, fused={self.fused}"
