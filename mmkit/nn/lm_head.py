"""A fused, chunked LM head: linear layer + output normalizer + cross-entropy.

``fused_linear_cross_entropy(hidden, weight, bias, target, normalizer)`` equals
``normalizer.loss(hidden @ weight.T + bias, target, ...)`` in value and in every
gradient (hidden, weight, bias and the normalizer's parameters), without ever
holding the full ``[tokens, V]`` logits.

**Strategy: token chunks, gradients in the forward** (as Liger-Kernel's fused
linear cross-entropy). For each block of ``chunk_size`` tokens the forward computes
the logits ``[C, V]`` (the matmul in the input dtype, i.e. bf16 tensor cores with
fp32 accumulation under autocast, then upcast to fp32), the modulation σ, the
log-softmax, the loss, and at once ``∂L/∂logits``. That gradient is consumed right
away: ``∂L/∂h_c = dz·W`` is written into a ``[T, D]`` buffer, ``∂L/∂W += dzᵀ·h_c``,
``∂L/∂b += Σ dz`` and the SegLU/temperature parameter gradients are accumulated
in fp32 (fp64 for fp64 inputs); the chunk's logits are then freed. The backward
only scales the stored gradients by the incoming ``grad_output``. Peak extra memory
is a few ``[C, V]`` buffers plus one fp32 ``[V, D]`` accumulator. There is no
host synchronisation: the parameters never leave the device.

Vocabulary chunking with an online log-sum-exp was not chosen: it needs a second
pass over the vocabulary (or a stored ``[T, V]`` gradient) to form ``∂L/∂h``, and
σ makes every vocabulary block depend on the parameters, so the token layout is
both simpler and cheaper.

On CUDA the per-chunk element-wise math goes through :func:`torch.compile` by
default (``compile=None``); on CPU it runs eagerly.

Conventions follow :func:`mmkit.normalizers.cross_entropy`: ``ignore_index``
tokens count nowhere, a ``"mean"`` divides by the number of other tokens, and a
mean over zero tokens is NaN (as ``F.cross_entropy``) with zero gradients;
``"sum"`` gives 0 there. ``reduction="none"`` and probability targets are not
supported (use the unfused path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import kernels
from ..kernels.lm_head_chunk import chunk_function
from ..normalizers import FusedForm, Normalizer

DEFAULT_CHUNK_SIZE = 2048


def supports_fused_head(normalizer: Normalizer) -> bool:
    """``True`` for the output normalizers the fused head implements exactly: those that
    declare a :class:`~mmkit.normalizers.FusedForm` (identity, any temperature, SegLU) with
    shared (not per-head) parameters, i.e. :class:`SoftMax` and a shared :class:`MultiMax`."""
    return _head_form(normalizer) is not None


def _head_form(normalizer: Normalizer) -> FusedForm | None:
    form = normalizer.fused_form()
    return None if form is None or form.per_head else form


@dataclass(frozen=True)
class _Spec:
    """Everything about one call that is not a tensor."""

    kind: str  # "identity" | "temperature" (fixed) | "log_temperature" (p1 = log T) | "seglu"
    order: int
    temperature: float | None  # the fixed temperature (kind "temperature")
    chunk_size: int
    ignore_index: int
    smoothing: float
    mean: bool
    use_compile: bool
    need_h: bool
    need_w: bool
    need_b: bool
    need_p: bool


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, p1: Tensor | None,
                p2: Tensor | None, target: Tensor, spec: _Spec) -> Tensor:
        tokens = hidden.shape[0]
        cdtype = torch.promote_types(hidden.dtype, torch.float32)
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        q1 = None if p1 is None else p1.to(cdtype)
        q2 = None if p2 is None else p2.to(cdtype)
        kind = spec.kind
        if kind == "temperature":
            q1 = spec.temperature
        elif kind == "log_temperature":  # SoftMax learns log T; the chunk math returns ∂L/∂log T
            kind, q1 = "temperature", p1.exp().to(cdtype)
        need_grads = spec.need_h or spec.need_w or spec.need_b or spec.need_p
        count = (target != spec.ignore_index).sum().to(cdtype)  # 0-d, stays on the device
        grad_scale = count.clamp_min(1.0).reciprocal() if spec.mean else torch.ones_like(count)
        fn = chunk_function(spec.use_compile)

        loss = torch.zeros((), dtype=cdtype, device=hidden.device)
        grad_h = (torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
                  if spec.need_h else None)  # [T, D], contiguous: chunks are written with mm(out=)
        grad_w = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if spec.need_w else None
        grad_b = (torch.zeros(weight.shape[0], dtype=cdtype, device=weight.device)
                  if spec.need_b else None)  # [V]
        grad_p1 = None if p1 is None or not spec.need_p else torch.zeros_like(q1)
        grad_p2 = None if p2 is None or not spec.need_p else torch.zeros_like(q2)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, tokens, spec.chunk_size):
                rows = slice(start, min(start + spec.chunk_size, tokens))
                h_c = hidden[rows]  # [C, D]
                z = F.linear(h_c, weight, bias)  # [C, V] in the matmul dtype
                part, dz, db, dp1, dp2 = fn(z, target[rows], q1, q2, grad_scale, kind, spec.order,
                                            spec.smoothing, spec.ignore_index, hidden.dtype,
                                            need_grads, spec.need_p)
                loss += part
                del z
                if not need_grads:
                    continue
                if grad_h is not None:
                    torch.mm(dz, weight, out=grad_h[rows])  # [C, V] x [V, D]
                if grad_w is not None:
                    if dz.dtype == acc_dtype:
                        grad_w.addmm_(dz.t(), h_c)  # [V, C] x [C, D]
                    else:  # low-precision product, accumulated across chunks in fp32
                        grad_w += torch.mm(dz.t(), h_c)
                if grad_b is not None:
                    grad_b += db
                if grad_p1 is not None:
                    grad_p1 += dp1
                if grad_p2 is not None and dp2 is not None:
                    grad_p2 += dp2
        ctx.save_for_backward(grad_h, grad_w, grad_b, grad_p1, grad_p2)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype,
                      None if p1 is None else p1.dtype, None if p2 is None else p2.dtype)
        return loss / count if spec.mean else loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        grads = []
        for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            grads.append(None if grad is None else (grad * grad_out.to(grad.dtype)).to(dtype))
        return (*grads, None, None)


def _check_inputs(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                  normalizer: Normalizer, chunk_size: int, label_smoothing: float,
                  reduction: str) -> None:
    if not supports_fused_head(normalizer):
        form = normalizer.fused_form()
        what = (f"a per-head {type(normalizer).__name__}" if form is not None and form.per_head
                else type(normalizer).__name__)
        raise ValueError(
            f"the fused LM head supports normalizers with a shared fused form (SoftMax and a shared "
            f"(num_heads=None) MultiMax), got {what}; "
            "use the unfused `normalizer.loss(hidden @ weight.T + bias, target)` instead")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' for the fused LM head, got {reduction!r} "
                         "(per-token losses need the unfused path)")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if hidden.ndim < 1 or weight.ndim != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"need hidden [..., D] and weight [V, D] with the same D, got hidden "
                         f"{tuple(hidden.shape)} and weight {tuple(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class ids (probability targets need the unfused "
                         f"path), got dtype {target.dtype}")
    if target.shape != hidden.shape[:-1]:
        raise ValueError(f"target shape {tuple(target.shape)} must equal hidden's shape without its "
                         f"last dim, {tuple(hidden.shape[:-1])}")


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    normalizer: Normalizer,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    compile: bool | None = None,
) -> Tensor:
    """``normalizer.loss(hidden @ weight.T + bias, target)`` without the ``[T, V]`` logits.

    Args:
        hidden: final hidden states ``[..., D]`` (any leading shape; flattened to ``[T, D]``).
        weight: output projection ``[V, D]`` (may be a tied embedding).
        bias: ``[V]`` or ``None``.
        target: class ids shaped like ``hidden`` without its last dim.
        normalizer: one with a shared :class:`~mmkit.normalizers.FusedForm` (see
            :func:`supports_fused_head`), e.g. :class:`~mmkit.normalizers.SoftMax` or a shared
            :class:`~mmkit.normalizers.MultiMax`; its parameters get gradients.
        chunk_size: tokens per chunk; the peak extra memory is a few ``[chunk_size, V]``
            buffers.
        ignore_index, label_smoothing, reduction: as :func:`mmkit.normalizers.cross_entropy`
            (``reduction`` is ``"mean"`` or ``"sum"``).
        compile: run the per-chunk element-wise math under :func:`torch.compile`
            (default: on CUDA only).

    Returns:
        The 0-d loss (fp32 for half inputs).

    Inside ``mmkit.kernels.disabled("lm_head_chunk")`` it computes the unfused
    ``normalizer.loss`` on the full logits instead (same value, same gradients).
    """
    _check_inputs(hidden, weight, bias, target, normalizer, chunk_size, label_smoothing, reduction)
    if not kernels.enabled("lm_head_chunk"):  # switched off: the unfused reference
        return normalizer.loss(F.linear(hidden, weight, bias), target, ignore_index=ignore_index,
                               label_smoothing=label_smoothing, reduction=reduction)
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # match the unfused path: the head runs in the autocast dtype
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    elif weight.dtype != hidden.dtype or (bias is not None and bias.dtype != hidden.dtype):
        raise ValueError(f"hidden, weight and bias must share a dtype outside autocast, got "
                         f"{hidden.dtype}, {weight.dtype} and {None if bias is None else bias.dtype}")
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [T, D]
    target = target.reshape(-1)  # [T]

    form = _head_form(normalizer)
    order, p1, p2, temperature = 0, None, None, None
    if form.kind == "seglu":
        kind, order, p1, p2 = "seglu", form.order, form.ranges, form.ts
    elif form.kind == "identity":
        kind = "identity"
    elif isinstance(form.temperature, float):  # fixed: the exact Python float (no host-to-device copy)
        kind, temperature = "temperature", form.temperature
    else:  # learnt: the chunks return the gradient with respect to log T
        kind, p1 = "log_temperature", (form.log_temperature if form.log_temperature is not None
                                       else form.temperature.log())
    grad_on = torch.is_grad_enabled()
    spec = _Spec(
        kind=kind, order=order, temperature=temperature, chunk_size=chunk_size, ignore_index=ignore_index,
        smoothing=float(label_smoothing), mean=reduction == "mean",
        use_compile=hidden.is_cuda if compile is None else bool(compile),
        need_h=grad_on and hidden.requires_grad, need_w=grad_on and weight.requires_grad,
        need_b=grad_on and bias is not None and bias.requires_grad,
        need_p=grad_on and any(p is not None and p.requires_grad for p in (p1, p2)),
    )
    return _FusedLinearCrossEntropy.apply(hidden, weight, bias, p1, p2, target, spec)
