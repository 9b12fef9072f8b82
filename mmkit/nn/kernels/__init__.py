"""Fused attention kernels.

:func:`multimax_attention` is the hook ``attend`` calls for a SegLU form (MultiMax) on
CUDA, with the form's ``ranges`` and ``ts`` tensors (no normalizer object): it runs
the Triton MultiMax flash-attention kernel (:mod:`.multimax_flash`) when the inputs
are supported and returns ``None`` otherwise, so ``attend`` falls back to the
materialized path, which is the reference for the kernel. Triton is imported lazily:
mmkit works without it.

:func:`use_multimax_kernel` switches the kernel off (or on) for a block of code,
e.g. to benchmark the materialized path; :func:`multimax_flash_attention` calls the
kernel directly on any Triton device (CPU tensors need ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:  # imports Triton
    from ._flash_launch import BlockConfig

_state = {"enabled": True, "fused_backward": False}


def multimax_kernel_enabled() -> bool:
    """Whether :func:`multimax_attention` may use the Triton kernel."""
    return _state["enabled"]


def set_multimax_kernel(enabled: bool) -> None:
    """Enable or disable the MultiMax kernel process-wide."""
    _state["enabled"] = bool(enabled)


@contextmanager
def _switch(key: str, enabled: bool) -> Iterator[None]:
    before = _state[key]
    _state[key] = bool(enabled)
    try:
        yield
    finally:
        _state[key] = before


def use_multimax_kernel(enabled: bool = True) -> AbstractContextManager[None]:
    """Enable or disable the MultiMax kernel inside a ``with`` block (restored after)."""
    return _switch("enabled", enabled)


def use_fused_backward(enabled: bool = True) -> AbstractContextManager[None]:
    """Inside a ``with`` block, the kernel ``attend`` uses runs the one-pass backward
    (σ and σ′ computed once, dq added per tile with atomics: not bitwise reproducible,
    so it is skipped under ``torch.use_deterministic_algorithms``). Off by default:
    it is checked for correctness but not yet timed against the two-kernel backward."""
    return _switch("fused_backward", enabled)


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
    if not _state["enabled"] or not q.is_cuda:
        return None
    try:
        from . import multimax_flash
    except ImportError:  # no Triton
        return None
    if multimax_flash.unsupported_reason(q, k, v, ranges, ts, mask, scale) is not None:
        return None
    return multimax_flash.multimax_flash_attention(q, k, v, ranges, ts, mask=mask, causal=causal,
                                                   scale=scale, fused_backward=_state["fused_backward"])
