"""MultiMax flash attention: ``softmax(σ(q·kᵀ·scale)) @ v`` without materializing scores.

:func:`multimax_flash_attention` runs the Triton kernels (``_fwd``,
``_bwd``) under one :class:`torch.autograd.Function` that returns the
gradients of q, k, v and of the SegLU parameters ``ranges`` and ``ts``. It works on
any device Triton can run on: CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1`` (set before Triton is first imported; the tests run such
cases in a worker process).

Supported: fp32/fp16/bf16 inputs of one dtype; power-of-two head dims 16–128 (q/k
and v may differ); any ``Nq``, ``Nk``; no mask, a bottom-right ``causal`` mask, and
bool key masks that do not depend on the query (shape ``[B|1, H|1, 1, Nk]`` after
left-padding with ones, e.g. :func:`mmkit.nn.masks.padding_mask`), alone or with
``causal``. :func:`unsupported_reason` says why an input is not.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._launch import (
    BlockConfig,
    flash_backward,
    flash_forward,
    fold_parameters,
    pick_config,
    unfold_gradients,
)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (16, 32, 64, 128)
MAX_ORDER = 4
MAX_BATCH_HEADS = 65535


class _MultiMaxFlash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, ranges: Tensor, ts: Tensor,
                key_mask: Tensor | None, causal: bool, scale: float, order: int,
                cfg: BlockConfig) -> Tensor:
        prm = fold_parameters(ranges, ts, order, scale)  # [Hp, 4·order] fp32
        out, lse = flash_forward(q, k, v, prm, key_mask, causal, scale, order, cfg)
        ctx.save_for_backward(q, k, v, out, lse, prm, ranges, ts, key_mask)
        ctx.causal, ctx.scale, ctx.order, ctx.cfg = causal, scale, order, cfg
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse, prm, ranges, ts, key_mask = ctx.saved_tensors
        param_grad = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        dq, dk, dv, partials = flash_backward(grad_out, q, k, v, out, lse, prm, key_mask,
                                              ctx.causal, ctx.scale, ctx.order, ctx.cfg, param_grad)
        grad_r = grad_t = None
        if partials is not None:
            grad_r, grad_t = unfold_gradients(partials, ranges, ts, ctx.order, q.shape[0], q.shape[1])
        return dq, dk, dv, grad_r, grad_t, None, None, None, None, None


def _mask_reason(mask: Tensor, shape: tuple[int, int, int, int]) -> str | None:
    bsz, heads, _, n_k = shape
    if mask.dtype != torch.bool:
        return f"mask must be bool (True = attend), got {mask.dtype}"
    if mask.ndim > 4:
        return f"mask must have at most 4 dims, got shape {tuple(mask.shape)}"
    full = (1,) * (4 - mask.ndim) + tuple(mask.shape)
    ok = full[2] == 1 and full[3] in (1, n_k) and full[0] in (1, bsz) and full[1] in (1, heads)
    if not ok:
        return (f"the kernel takes key masks shaped [B|1, H|1, 1, Nk]; got {tuple(mask.shape)} "
                f"for scores [{bsz}, {heads}, Nq, {n_k}]")
    return None


def unsupported_reason(q: Tensor, k: Tensor, v: Tensor, ranges: Tensor, ts: Tensor,
                       mask: Tensor | None, scale: float) -> str | None:
    """Why the kernel cannot take these inputs, or ``None`` when it can."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        return "q, k, v must be [B, H, N, D]"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in DTYPES:
        return f"q, k, v must share one dtype of {DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
    if not (q.device == k.device == v.device == ranges.device == ts.device):
        return "q, k, v and the parameters must be on one device"
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[3] != k.shape[3]:
        return f"mismatched shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.shape[3] not in HEAD_DIMS or v.shape[3] not in HEAD_DIMS:
        return f"head dims must be one of {HEAD_DIMS}, got {q.shape[3]} and {v.shape[3]}"
    if min(q.shape[:3]) == 0 or k.shape[2] == 0:
        return "empty inputs"
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        return f"batch × heads must be at most {MAX_BATCH_HEADS} (a CUDA grid dimension)"
    if ranges.shape != ts.shape or ranges.ndim not in (1, 2) or ranges.shape[-1] % 2:
        return f"ranges/ts must both be [2N] or [H, 2N], got {tuple(ranges.shape)}, {tuple(ts.shape)}"
    if ranges.ndim == 2 and ranges.shape[0] != q.shape[1]:
        return f"per-head parameters for {ranges.shape[0]} heads, but q has {q.shape[1]}"
    if not 1 <= ranges.shape[-1] // 2 <= MAX_ORDER:
        return f"SegLU order must be in 1..{MAX_ORDER}, got {ranges.shape[-1] // 2}"
    if not (math.isfinite(scale) and scale > 0):
        return f"scale must be finite and positive, got {scale}"
    return None if mask is None else _mask_reason(mask, tuple(q.shape[:2]) + (q.shape[2], k.shape[2]))


def _key_mask(mask: Tensor | None, bsz: int, heads: int, n_k: int) -> Tensor | None:
    """A supported mask as a ``[B, H, Nk]`` uint8 view (stride 0 where it broadcasts)."""
    if mask is None:
        return None
    full = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))  # [B|1, H|1, 1, Nk|1]
    return full.expand(bsz, heads, 1, n_k)[:, :, 0, :].view(torch.uint8)  # [B, H, Nk]


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def multimax_flash_attention(q: Tensor, k: Tensor, v: Tensor, ranges: Tensor, ts: Tensor, *,
                             mask: Tensor | None = None, causal: bool = False,
                             scale: float | None = None,
                             block: int | BlockConfig | None = None,
                             fused_backward: bool = False) -> Tensor:
    """``MultiMax(q·kᵀ·scale, mask) @ v`` with the Triton kernels, on any Triton device.

    Args:
        q, k, v: ``[B, H, Nq, D]``, ``[B, H, Nk, D]``, ``[B, H, Nk, Dv]``.
        ranges, ts: SegLU parameters ``[2N]`` (shared) or ``[H, 2N]`` (per head), laid
            out as in :class:`~mmkit.normalizers.MultiMax`.
        mask: bool key mask broadcastable from ``[B, H, 1, Nk]`` (True = attend).
        causal: bottom-right aligned causal mask (queries are the last Nq keys).
        scale: score scale, ``1/sqrt(D)`` by default.
        block: force square tiles of this size (power of two ≥ 16) or a
            :class:`BlockConfig` (tests: many blocks at tiny sizes).
        fused_backward: run the one-pass backward (``BlockConfig.fused_bwd``; dq by
            per-tile atomics, so not bitwise reproducible; the two-kernel backward runs
            instead under ``torch.use_deterministic_algorithms``).

    Raises:
        ValueError: for inputs the kernel does not support (see :func:`unsupported_reason`).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    reason = unsupported_reason(q, k, v, ranges, ts, mask, scale)
    if reason is not None:
        raise ValueError(f"multimax_flash_attention: {reason}")
    cfg = pick_config(q.shape[-1], q.dtype, q.device, block)
    if fused_backward and not cfg.fused_bwd:
        cfg = dataclasses.replace(cfg, fused_bwd=True)
    bsz, heads, _, _ = q.shape
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    key_mask = _key_mask(mask, bsz, heads, k.shape[2])
    return _MultiMaxFlash.apply(q, k, v, ranges, ts, key_mask, bool(causal), scale,
                                ranges.shape[-1] // 2, cfg)
