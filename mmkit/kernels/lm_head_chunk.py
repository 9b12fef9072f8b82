"""Per-chunk math of the fused LM head: modulation, log-softmax, loss and gradients.

One call handles a block of logits ``z`` ``[C, V]`` (``C`` tokens, the whole
vocabulary) and returns the chunk's loss sum, the gradient with respect to ``z``
(already cast to the matmul dtype), the column sums of that gradient (the bias
gradient) and the gradients of the modulation parameters. It is a pure function
of tensors, so :func:`torch.compile` can fuse it into a few kernels on CUDA; on
CPU it runs eagerly.

Modulations (``kind``):

- ``"identity"``: plain softmax, ``y = z``;
- ``"temperature"``: ``y = z / T`` with ``p1`` the temperature (a Python float when
  fixed, a 0-d tensor when learnt); the returned parameter gradient is the one with
  respect to ``log T`` (SoftMax learns ``log T``);
- ``"seglu"``: ``y = σ(z)`` with ``p1 = ranges [2N]`` and ``p2 = ts [2N]``.

With ``g = ∂L/∂y = w·(softmax(y) - q)``, where ``q`` is the (smoothed) one-hot target
and ``w`` the row weight (0 for ignored rows, ``1/count`` for a mean), the SegLU
pieces ``u_b = relu(b - z)`` and ``u_d = relu(z - d)`` of order ``n`` give::

    ∂L/∂z  = g · (1 - Σ n·t_b·u_b^(n-1)·[z < b] + Σ n·t_d·u_d^(n-1)·[z > d])
    ∂L/∂t_b = Σ g·u_b^n          ∂L/∂b = n·t_b·Σ g·u_b^(n-1)·[z < b]
    ∂L/∂t_d = Σ g·u_d^n          ∂L/∂d = -n·t_d·Σ g·u_d^(n-1)·[z > d]

The strict inequalities match autograd of ``relu`` (zero gradient at 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ChunkResult = tuple[Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]


def _piece(z: Tensor, r: Tensor, j: int) -> Tensor:
    """SegLU piece ``j`` before its power: ``relu(b - z)`` (even j) or ``relu(z - d)`` (odd j)."""
    return (r - z if j % 2 == 0 else z - r).clamp_min_(0)


def _modulate(z: Tensor, kind: str, p1: Tensor | float | None, p2: Tensor | None, order: int) -> Tensor:
    """``y = modulation(z)`` for a chunk ``z`` ``[C, V]`` (``z`` itself for the identity)."""
    if kind == "identity":
        return z
    if kind == "temperature":
        return z / p1
    y = z.clone()
    for j in range(2 * order):
        n = j // 2 + 1
        u = _piece(z, p1[j], j)  # [C, V]
        y.addcmul_(u.pow_(n) if n > 1 else u, p2[j])  # + t·u^n
    return y


def chunk_loss_and_grads(
    z: Tensor,
    target: Tensor,
    p1: Tensor | float | None,
    p2: Tensor | None,
    grad_scale: Tensor,
    kind: str,
    order: int,
    smoothing: float,
    ignore_index: int,
    grad_dtype: torch.dtype,
    need_grads: bool,
    need_param_grads: bool,
) -> ChunkResult:
    """Loss sum and gradients of one chunk; see the module docstring.

    Args:
        z: logits ``[C, V]`` (any float dtype; the math runs in fp32 at least).
        target: class ids ``[C]``; ``ignore_index`` rows contribute nothing.
        p1, p2: the modulation parameters (see the module docstring), compute dtype.
        grad_scale: 0-d weight of each valid row's gradient (``1/count`` for a mean).
        kind, order: the modulation and the SegLU order.
        smoothing, ignore_index: as :func:`mmkit.normalizers.cross_entropy`.
        grad_dtype: dtype of the returned ``∂L/∂z`` (the matmul dtype).
        need_grads: compute ``∂L/∂z`` and the bias gradient (else only the loss).
        need_param_grads: compute the modulation parameter gradients.

    Returns:
        ``(loss_sum, dz [C, V] | None, dbias [V] | None, dp1 | None, dp2 | None)``.
    """
    cdtype = torch.promote_types(z.dtype, torch.float32)
    z = z.to(cdtype)
    num_classes = z.shape[-1]
    valid = (target != ignore_index)[:, None]  # [C, 1]
    tgt = torch.where(valid, target[:, None], 0)  # [C, 1], ignored rows point at class 0
    y = _modulate(z, kind, p1, p2, order)  # [C, V]
    lse = torch.logsumexp(y, dim=-1, keepdim=True)  # [C, 1]
    rows = lse - (1.0 - smoothing) * y.gather(1, tgt)  # [C, 1]
    if smoothing > 0:
        rows = rows - smoothing * y.mean(dim=-1, keepdim=True)
    loss = torch.where(valid, rows, 0.0).sum()
    if not need_grads:
        return loss, None, None, None, None
    weight = torch.where(valid, grad_scale, 0.0)  # [C, 1]
    g = (y - lse).exp_()  # softmax [C, V]
    if torch.compiler.is_compiling():  # a comparison fuses into the element-wise kernel
        is_target = torch.arange(num_classes, device=z.device)[None, :] == tgt  # [C, V]
        g = g - (1.0 - smoothing) * is_target.to(cdtype)
    else:  # eager: touch only the target entries
        g.scatter_add_(1, tgt, torch.full_like(lse, smoothing - 1.0))
    if smoothing > 0:
        g.sub_(smoothing / num_classes)
    g.mul_(weight)  # ∂L/∂y = w·(softmax - q) [C, V]
    dp1 = dp2 = None
    if kind == "identity":
        dz = g
    elif kind == "temperature":
        dz = g / p1
        if need_param_grads:
            dp1 = -(g * y).sum()  # ∂L/∂log T = -Σ g·y
    else:
        dz, dp1, dp2 = _seglu_backward(z, g, p1, p2, order, need_param_grads)
    return loss, dz.to(grad_dtype), dz.sum(0), dp1, dp2


def _seglu_backward(z: Tensor, g: Tensor, ranges: Tensor, ts: Tensor, order: int,
                    need_param_grads: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``∂L/∂z`` and the gradients of ``ranges``/``ts`` [2N] from ``g = ∂L/∂σ(z)``."""
    dz = g.clone()
    d_ranges: list[Tensor] = []
    d_ts: list[Tensor] = []
    for j in range(2 * order):
        n, sign = j // 2 + 1, -1.0 if j % 2 == 0 else 1.0  # below (b, t_b), above (d, t_d)
        u = _piece(z, ranges[j], j)  # [C, V]
        # g·u^(n-1) on the support u > 0 (strict, as autograd's relu)
        gu = torch.where(u > 0, g, 0.0) if n == 1 else g * (u if n == 2 else u ** (n - 1))
        coef = (sign * n) * ts[j]  # ∂σ/∂z of the piece is coef·u^(n-1)
        dz.addcmul_(gu, coef)
        if need_param_grads:
            d_ranges.append(-coef * gu.sum())
            d_ts.append(gu.mul_(u).sum())  # Σ g·u^n (a cascade sum: BLAS dot loses fp32 bits)
    if not need_param_grads:
        return dz, None, None
    return dz, torch.stack(d_ranges), torch.stack(d_ts)


_COMPILED: dict[str, Callable[..., ChunkResult]] = {}


def chunk_function(use_compile: bool) -> Callable[..., ChunkResult]:
    """The per-chunk function, compiled once per process when ``use_compile``."""
    if not use_compile:
        return chunk_loss_and_grads
    if "fn" not in _COMPILED:
        # dynamic=False: one graph per chunk shape (the full chunk and the remainder).
        _COMPILED["fn"] = torch.compile(chunk_loss_and_grads, dynamic=False)
    return _COMPILED["fn"]
