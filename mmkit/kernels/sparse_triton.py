"""The Triton path of sparsemax, 1.5-entmax and α-entmax (see :mod:`.sparse_triton_kernels`).

:func:`sparsemax`, :func:`entmax15` and :func:`entmax_bisect` dispatch here for CUDA
tensors (fp32, fp16, bf16) whose rows fit in one tile (``N <= MAX_N``); everything
else, CPU included, takes the torch path, and so does everything inside
``mmkit.kernels.disabled("sparse_triton")``. The entry points below take CPU tensors
too, which then run under the Triton interpreter: that is how the tests check the
kernels without a GPU. The semantics are those of the torch path: masked entries
(mask ``False`` or score ``-inf``) get 0, fully masked rows are all zeros with zero
gradients, and half inputs are computed in fp32 and returned in their dtype.

The forward saves the input and three floats per row (shift, threshold, log-sum), and
the backward recomputes ``p`` from them in fp32, as the forward computed it.
"""

from __future__ import annotations

import functools
import importlib.util
from contextlib import AbstractContextManager

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .rows import check_dim, to_rows
from .switches import disabled, enabled

#: Longest row the kernels hold in registers; longer rows take the torch path.
MAX_N = 16384
#: Bisection steps. Sparsemax/1.5-entmax are then refined exactly (closed form on the
#: support); α-entmax takes one Newton step after them. α > 2 is ill-conditioned on
#: near-uniform rows (s = p^(2-α) grows as p shrinks), so it bisects longer.
N_BISECT_EXACT, N_REFINE, N_BISECT_ALPHA, N_BISECT_ALPHA_GT2 = 20, 2, 20, 28
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_KIND = {"sparsemax": 0, "entmax15": 1, "entmax": 2}


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def torch_path_only() -> AbstractContextManager[None]:
    """Within this context CUDA inputs take the torch path (for benchmarks and checks):
    ``mmkit.kernels.disabled("sparse_triton")``."""
    return disabled("sparse_triton")


def use_triton(scores: Tensor, dim: int) -> bool:
    """Whether ``scores`` takes the Triton path: CUDA, a supported dtype, rows that fit."""
    if not (scores.is_cuda and scores.dtype in SUPPORTED_DTYPES and scores.ndim
            and scores.numel()):
        return False
    return scores.shape[check_dim(scores, dim)] <= MAX_N and triton_available() and enabled("sparse_triton")


def _check_mask(scores: Tensor, mask: Tensor | None) -> None:
    """The mask checks of :func:`.base.check_mask` (``-inf`` scores are masked in-kernel)."""
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = keep), got dtype {mask.dtype}; "
                         "convert an additive float mask with `mask = additive_mask == 0`")
    try:
        torch.broadcast_shapes(mask.shape, scores.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to scores of shape "
                         f"{tuple(scores.shape)}") from None


def mask_rows(mask: Tensor, shape: torch.Size, dim: int) -> tuple[Tensor, int, int, int, int]:
    """The keep-mask as rows without copying a broadcast mask where possible.

    Returns ``(mask_u8, rows_in, stride_out, stride_in, stride_col)``: row ``r`` of the
    ``[M, N]`` row view starts at ``(r // rows_in) * stride_out + (r % rows_in) * stride_in``.
    The leading dims are merged into at most two strided groups (a ``[Nq, Nk]`` causal
    mask broadcast over ``[B, H]`` is one such case); otherwise the mask is copied.
    """
    m = mask.expand(shape).movedim(dim, -1)  # [..., N], possibly zero strides
    groups: list[list[int]] = []  # [size, stride] from the innermost leading dim outwards
    for size, stride in zip(reversed(m.shape[:-1]), reversed(m.stride()[:-1])):
        if size == 1:
            continue
        if groups and stride == groups[-1][0] * groups[-1][1]:
            groups[-1][0] *= size
        else:
            groups.append([size, stride])
    if len(groups) > 2:
        m = m.reshape(-1, m.shape[-1]).contiguous()  # [M, N]
        groups = [[m.shape[0], m.stride(0)]]
    inner = groups[0] if groups else [1, 0]
    outer = groups[1] if len(groups) > 1 else [1, 0]
    return m.view(torch.uint8), inner[0], outer[1], inner[1], m.stride(-1)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _SparseRowsFn(torch.autograd.Function):
    """``[M, N]`` rows to probabilities; ``alpha`` is ``[M, 1]``, ``[1, 1]`` or ``None``."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor | None, mask: Tensor | None,
                layout: tuple[int, int, int, int], kind: int, alpha_gt2: bool) -> Tensor:
        from .sparse_triton_kernels import kernels, launch_config

        k = kernels(interpret=not x.is_cuda)
        n_rows, n_cols = x.shape
        block_m, block_n, warps = launch_config(n_cols)
        y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
        stats = torch.empty((3, n_rows), dtype=torch.float32, device=x.device)  # max, τ, log2 Σp
        a = alpha if alpha is not None else stats  # any pointer: unused unless kind == 2
        a_stride = 0 if alpha is None or alpha.shape[0] == 1 else alpha.stride(0)
        m = mask if mask is not None else x
        n_bisect = N_BISECT_EXACT if kind != 2 else N_BISECT_ALPHA_GT2 if alpha_gt2 else N_BISECT_ALPHA
        k.fwd[(_cdiv(n_rows, block_m),)](
            x, y, m, a, stats, n_rows, n_cols, x.stride(0), x.stride(1), *layout, a_stride,
            KIND=kind, HAS_MASK=mask is not None, N_BISECT=n_bisect, N_REFINE=N_REFINE,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
        ctx.save_for_backward(x, alpha, mask, stats)
        ctx.layout, ctx.kind = layout, kind
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        from .sparse_triton_kernels import kernels, launch_config

        x, alpha, mask, stats = ctx.saved_tensors
        k = kernels(interpret=not x.is_cuda)
        n_rows, n_cols = x.shape
        block_m, block_n, warps = launch_config(n_cols)
        need_da = alpha is not None and ctx.needs_input_grad[1]
        dx = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
        da = torch.empty((n_rows,), dtype=torch.float32, device=x.device) if need_da else stats
        a = alpha if alpha is not None else stats
        a_stride = 0 if alpha is None or alpha.shape[0] == 1 else alpha.stride(0)
        m = mask if mask is not None else x
        k.bwd[(_cdiv(n_rows, block_m),)](
            x, grad, dx, m, a, stats, da, n_rows, n_cols, x.stride(0), x.stride(1),
            grad.stride(0), grad.stride(1), *ctx.layout, a_stride,
            KIND=ctx.kind, HAS_MASK=mask is not None, NEED_DA=need_da,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
        g_alpha = None
        if need_da:
            g_alpha = da.view(n_rows, 1)  # [M, 1]
            if alpha.shape[0] == 1:
                g_alpha = g_alpha.sum(0, keepdim=True)  # [1, 1]
            g_alpha = g_alpha.to(alpha.dtype)
        return dx, g_alpha, None, None, None, None


def sparse_rows(scores: Tensor, kind: str, mask: Tensor | None = None, dim: int = -1,
                alpha: Tensor | None = None, alpha_gt2: bool = True) -> Tensor:
    """Run the Triton kernels along ``dim`` (``kind``: sparsemax, entmax15 or entmax).

    ``alpha`` (kind ``entmax``) is a tensor that broadcasts to ``scores`` and is constant
    along ``dim``. CUDA tensors run compiled kernels, CPU tensors the Triton interpreter.
    """
    if kind not in _KIND:
        raise ValueError(f"kind must be one of {', '.join(_KIND)}, got {kind!r}")
    if scores.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the Triton path takes fp32/fp16/bf16 scores, got {scores.dtype}")
    dim = check_dim(scores, dim)
    _check_mask(scores, mask)
    if scores.ndim == 0:
        raise ValueError("the Triton path needs scores with at least one dim")
    n = scores.shape[dim]
    if n > MAX_N:
        raise ValueError(f"the Triton path takes rows of at most {MAX_N} entries, got {n}")
    if scores.numel() == 0:
        return scores.clone()
    x, back = to_rows(scores, dim)  # [M, N]
    a = None
    if _KIND[kind] == 2:
        if alpha is None:
            raise ValueError("kind 'entmax' needs alpha")
        if alpha.numel() == 1:
            a = alpha.reshape(1, 1).float()  # [1, 1]
        else:
            shape = list(scores.shape)
            shape[dim] = 1
            a = to_rows(alpha.float().expand(shape), dim)[0].contiguous()  # [M, 1]
    if mask is None:
        m, layout = None, (1, 0, 0, 0)
    else:
        m, *rest = mask_rows(mask, scores.shape, dim)
        layout = tuple(rest)
    return back(_SparseRowsFn.apply(x, a, m, layout, _KIND[kind], alpha_gt2))


def triton_sparsemax(scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
    """Sparsemax through the Triton kernels (CPU tensors: the Triton interpreter)."""
    return sparse_rows(scores, "sparsemax", mask, dim)


def triton_entmax15(scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
    """1.5-entmax through the Triton kernels (CPU tensors: the Triton interpreter)."""
    return sparse_rows(scores, "entmax15", mask, dim)


def triton_entmax_bisect(scores: Tensor, alpha: Tensor | float = 1.5, mask: Tensor | None = None,
                         dim: int = -1) -> Tensor:
    """α-entmax through the Triton kernels; a float ``alpha`` of 2 or 1.5 takes the exact
    sparsemax or 1.5-entmax kernel, anything else (and any tensor) the bisection kernel."""
    if not isinstance(alpha, Tensor):
        if not alpha > 1:
            raise ValueError(f"alpha must be > 1, got {alpha}")
        if alpha in (1.5, 2.0):
            return sparse_rows(scores, "entmax15" if alpha == 1.5 else "sparsemax", mask, dim)
        lowest, highest = float(alpha), float(alpha)
        alpha = torch.tensor(float(alpha), device=scores.device)
    else:
        lowest, highest = torch.stack(torch.aminmax(alpha.detach().float().reshape(-1))).tolist()  # 1 sync
    if not lowest > 1:
        raise ValueError(f"alpha must be > 1, got {alpha}")
    return sparse_rows(scores, "entmax", mask, dim, alpha=alpha.to(scores.device),
                       alpha_gt2=highest > 2)
