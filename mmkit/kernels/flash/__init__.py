"""The MultiMax flash attention: the dispatch hook and the direct entry point.

:func:`multimax_attention` is the hook ``attend`` calls for a SegLU form (MultiMax) on
CUDA, with the form's ``ranges`` and ``ts`` tensors (no normalizer object): it runs
the Triton MultiMax flash-attention kernel (:mod:`.multimax_flash`) when the inputs
are supported and returns ``None`` otherwise, so ``attend`` falls back to the
materialized path, which is the reference for the kernel. Triton is imported lazily:
mmkit works without it.

The kernel follows the ``"flash"`` switch of :mod:`mmkit.kernels` (on by default) and
its one-pass backward the ``"fused_backward"`` switch (off by default);
:func:`use_multimax_kernel` and :func:`use_fused_backward` set them for a ``with``
block. :func:`multimax_flash_attention` calls the kernel directly on any Triton device
(CPU tensors need ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from torch import Tensor

from ..switches import enabled, set_switch, switched

if TYPE_CHECKING:  # imports Triton
    from ._launch import BlockConfig


def multimax_kernel_enabled() -> bool:
    """Whether :func:`multimax_attention` may use the Triton kernel (the ``"flash"`` switch)."""
    return enabled("flash")


def set_multimax_kernel(enabled: bool) -> None:
    """Enable or disable the MultiMax kernel for the rest of the current context (thread)."""
    set_switch("flash", bool(enabled))


def use_multimax_kernel(enabled: bool = True) -> AbstractContextManager[None]:
    """Enable or disable the MultiMax kernel inside a ``with`` block (restored after);
    the ``"flash"`` switch of :mod:`mmkit.kernels`."""
    return switched("flash", bool(enabled))


def use_fused_backward(enabled: bool = True) -> AbstractContextManager[None]:
    """Inside a ``with`` block, the kernel ``attend`` uses runs the one-pass backward
    (σ and σ′ computed once, dq added per tile with atomics: not bitwise reproducible,
    so it is skipped under ``torch.use_deterministic_algorithms``). Off by default:
    it is checked for correctness but not yet timed against the two-kernel backward.
    The ``"fused_backward"`` switch of :mod:`mmkit.kernels`."""
    return switched("fused_backward", bool(enabled))


def multimax_flash_attention(q: Tensor, k: Tensor, v: Tensor, ranges: Tensor, ts: Tensor, *,
                             mask: Tensor | None = None, causal: bool = False,
                             scale: float | None = None,
                             block: int | BlockConfig | None = None,
                             fused_backward: bool = False) -> Tensor:
    """The Triton kernel on any device; see :func:`.multimax_flash.multimax_flash_attention`."""
    from .multimax_flash import multimax_flash_attention as run

    return run(q, k, v, ranges, ts, mask=mask, causal=causal, scale=scale, block=block,
               fused_backward=fused_backward)


def multimax_attention(q: Tensor, k: Tensor, v: Tensor, ranges: Tensor, ts: Tensor, *,
                       mask: Tensor | None, causal: bool, scale: float) -> Tensor | None:
    """The fused MultiMax attention output, or ``None`` when no kernel applies.

    ``ranges`` and ``ts`` are the SegLU parameters, ``[2N]`` or ``[H, 2N]`` (a SegLU
    :class:`~mmkit.normalizers.FusedForm`'s). The contract for a kernel: the same value
    and gradients (q, k, v, ``ranges`` and ``ts``) as
    ``softmax(seglu(q @ kᵀ · scale, ranges, ts), mask) @ v`` with a bottom-right causal
    mask when ``causal``; no dropout, no bias, no weights returned. ``None`` when the
    kernel is disabled, the tensors are not on CUDA, Triton is missing, or the dtype,
    head dim or mask shape is not supported.
    """
    if not enabled("flash") or not q.is_cuda:
        return None
    try:
        from . import multimax_flash
    except ImportError:  # no Triton
        return None
    if multimax_flash.unsupported_reason(q, k, v, ranges, ts, mask, scale) is not None:
        return None
    return multimax_flash.multimax_flash_attention(q, k, v, ranges, ts, mask=mask, causal=causal,
                                                   scale=scale, fused_backward=enabled("fused_backward"))
