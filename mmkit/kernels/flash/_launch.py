"""Host side of the MultiMax flash kernels: block sizes, parameter folding, launches.

Nothing here syncs with the device: the SegLU parameters are folded and unfolded
with tensor ops, and the parameter-gradient partials are summed with ``torch.sum``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from ._bwd import mm_bwd_dkdv_kernel, mm_bwd_dq_kernel
from ._bwd_fused import mm_bwd_delta_kernel, mm_bwd_fused_kernel
from ._fwd import mm_fwd_kernel

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes (``m`` = query rows, ``n`` = keys) and launch options of the three kernels.

    ``dkdv_m`` is the query step of the key-block kernel; ``dq_n`` the key step of the
    query-block one. ``fused_bwd`` runs the one-pass backward (``_bwd_fused``: the
    dk/dv tiles and warps, dq by per-tile atomics) instead of the dq and dk/dv kernels.
    """

    fwd_m: int
    fwd_n: int
    fwd_warps: int
    fwd_stages: int
    dq_m: int
    dq_n: int
    dkdv_m: int
    dkdv_n: int
    bwd_warps: int
    bwd_stages: int
    fused_bwd: bool = False


#: ``(half precision?, head dim ≤ 64?)`` -> tiles. Half precision, head dim 64: the fastest
#: of a sweep timed on an H100 (bf16, order 2, causal, B4 H12 N4096; tools/profile_flash.py
#: --sweep): 64×64 tiles, 4 warps, 3 stages in the forward and dq kernels, 64 keys × 32
#: queries in dk/dv. Head dim 128 (the same sweep at H6): the same, with 32-key steps in
#: dq. fp32 (full-precision dots unless TF32 is allowed) is for correctness, not speed.
CUDA_CONFIGS = {
    (True, True): BlockConfig(64, 64, 4, 3, 64, 64, 32, 64, 4, 3),
    (True, False): BlockConfig(64, 64, 4, 3, 64, 32, 32, 64, 4, 3),
    (False, True): BlockConfig(64, 32, 4, 2, 32, 32, 32, 32, 4, 2),
    (False, False): BlockConfig(64, 32, 4, 2, 32, 16, 32, 32, 4, 2),
}


def pick_config(head_dim: int, dtype: torch.dtype, device: torch.device,
                block: int | BlockConfig | None = None) -> BlockConfig:
    """The tiles for ``head_dim`` and ``dtype`` (see :data:`CUDA_CONFIGS`).

    ``block`` forces a :class:`BlockConfig`, or square ``block × block`` tiles everywhere
    (tests use small tiles to walk many blocks at tiny sizes); the interpreter (CPU
    tensors) defaults to 32.
    """
    if isinstance(block, BlockConfig):
        tiles = (block.fwd_m, block.fwd_n, block.dq_m, block.dq_n, block.dkdv_m, block.dkdv_n)
        if any(t < 16 or t & (t - 1) for t in tiles):
            raise ValueError(f"tile sizes must be powers of two >= 16, got {block}")
        return block
    if block is not None and (block < 16 or block & (block - 1)):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    if block is None and device.type == "cuda":
        return CUDA_CONFIGS[(dtype != torch.float32, head_dim <= 64)]
    b = 32 if block is None else block
    return BlockConfig(b, b, 4, 1, b, b, b, b, 4, 1)


@functools.lru_cache(maxsize=64)
def _fold_coefficients(order: int, scale: float, device: torch.device) -> Tensor:
    """``[N, 4]`` ``(1/scale, 1/scale, L·scaleⁿ, L·scaleⁿ)``, the factors that fold
    ``(b, d, tb, td)`` of order ``n``; made once per ``(order, scale, device)``."""
    n = torch.arange(1, order + 1, dtype=torch.float64)[:, None]  # [N, 1]
    fold = torch.cat([torch.full((order, 2), 1.0 / scale, dtype=torch.float64),
                      (LOG2E * scale ** n).expand(order, 2)], dim=1)  # [N, 4]
    return fold.to(device=device, dtype=torch.float32)


def fold_parameters(ranges: Tensor, ts: Tensor, order: int, scale: float) -> Tensor:
    """``[Hp, 4·order]`` fp32 buffer ``[b″, d″, tb″, td″]`` per order (see ``_common``).

    ``ranges``/``ts`` are ``[2N]`` (shared, Hp = 1) or ``[H, 2N]`` (per head). Two small
    device ops (a concatenation and an in-place product): the host cost matters at short
    sequences.
    """
    fold = _fold_coefficients(order, float(scale), ranges.device)
    pairs = torch.cat([ranges.detach().reshape(-1, order, 2), ts.detach().reshape(-1, order, 2)],
                      dim=-1).float()  # [Hp, N, (b, d, tb, td)]
    return pairs.mul_(fold).view(pairs.shape[0], 4 * order)  # (b/scale, d/scale, L·t·scaleⁿ)


def unfold_gradients(partials: Tensor, ranges: Tensor, ts: Tensor, order: int, batch: int,
                     heads: int) -> tuple[Tensor, Tensor]:
    """Gradients of ``ranges`` and ``ts``: the sum of the programs' shares.

    ``partials`` is ``[B·H, blocks, NP]``; each row holds one program's share, already
    scaled by the kernel (``store_partials``): ``2·order`` columns for ``ranges``, then
    ``2·order`` for ``ts``, then zeros. One device op (the sum) and two slices.
    """
    if ranges.ndim == 2:  # per head
        g = partials.view(batch, heads, partials.shape[1], partials.shape[2]).sum((0, 2))  # [H, NP]
    else:
        g = partials.sum((0, 1))  # [NP]
    grad_r, grad_t = g[..., : 2 * order], g[..., 2 * order: 4 * order]  # shaped as ranges, ts
    if grad_r.dtype != ranges.dtype or grad_t.dtype != ts.dtype:
        grad_r, grad_t = grad_r.to(ranges.dtype), grad_t.to(ts.dtype)
    return grad_r, grad_t


def _precision(x: Tensor) -> str:
    """fp32 dots: TF32 when torch allows it for matmuls, else full fp32 (``ieee``)."""
    if x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"  # ignored for fp16/bf16 inputs


def _mask_args(key_mask: Tensor | None, fallback: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    if key_mask is None:
        return fallback, (0, 0, 0)
    return key_mask, tuple(key_mask.stride())  # [B, H, Nk], broadcast dims have stride 0


def flash_forward(q: Tensor, k: Tensor, v: Tensor, prm: Tensor, key_mask: Tensor | None,
                  causal: bool, scale: float, order: int, cfg: BlockConfig) -> tuple[Tensor, Tensor]:
    """``(O [B, H, Nq, Dv], lse [B·H, Nq] fp32 in log2 units)``."""
    bsz, heads, n_q, dim = q.shape
    n_k, v_dim = k.shape[2], v.shape[3]
    out = torch.empty(bsz, heads, n_q, v_dim, device=q.device, dtype=q.dtype)
    lse = torch.empty(bsz * heads, n_q, device=q.device, dtype=torch.float32)
    mask, mstr = _mask_args(key_mask, q)
    grid = (triton.cdiv(n_q, cfg.fwd_m), bsz * heads)
    mm_fwd_kernel[grid](
        q, k, v, out, lse, prm, mask,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        *mstr, prm.stride(0) if prm.shape[0] > 1 else 0,
        heads, n_q, n_k, LOG2E * scale,
        HEAD_DIM=dim, V_DIM=v_dim, BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n, ORDER=order,
        CAUSAL=causal, HAS_MASK=key_mask is not None, PRECISION=_precision(q),
        num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages,
    )
    return out, lse


def partials_mode(order: int, param_grad: bool) -> int:
    """The dq kernel's ``PARTIALS``: 0 without parameter gradients, 1 (per-row vector
    accumulators) for orders 1–2, 2 (a ``[BLOCK_M, NP]`` tile) for higher orders."""
    if not param_grad:
        return 0
    return 1 if order <= 2 else 2


def launch_dq(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, prm: Tensor,
              key_mask: Tensor | None, causal: bool, scale: float, order: int, cfg: BlockConfig,
              partials: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, Δ [B·H, Nq] fp32, partials [B·H, blocks, NP] fp32)``; the partials are
    unwritten when ``partials == 0``."""
    bsz, heads, n_q, dim = q.shape
    n_k, v_dim = k.shape[2], v.shape[3]
    dq = torch.empty_like(q)
    delta = torch.empty(bsz * heads, n_q, device=q.device, dtype=torch.float32)
    num_m = triton.cdiv(n_q, cfg.dq_m)
    np_cols = triton.next_power_of_2(max(4 * order, 1))
    part = torch.empty(bsz * heads, num_m, np_cols, device=q.device, dtype=torch.float32)
    mask, mstr = _mask_args(key_mask, q)
    mm_bwd_dq_kernel[(num_m, bsz * heads)](
        q, k, v, do, out, lse, delta, dq, part, prm, mask,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *out.stride()[:3],
        *dq.stride()[:3], *mstr, prm.stride(0) if prm.shape[0] > 1 else 0,
        heads, n_q, n_k, LOG2E * scale, LN2,
        HEAD_DIM=dim, V_DIM=v_dim, BLOCK_M=cfg.dq_m, BLOCK_N=cfg.dq_n, ORDER=order, NP=np_cols,
        CAUSAL=causal, HAS_MASK=key_mask is not None, PRECISION=_precision(q), PARTIALS=partials,
        num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages,
    )
    return dq, delta, part


def launch_dkdv(do: Tensor, q: Tensor, k: Tensor, v: Tensor, lse: Tensor, delta: Tensor,
                prm: Tensor, key_mask: Tensor | None, causal: bool, scale: float, order: int,
                cfg: BlockConfig) -> tuple[Tensor, Tensor]:
    """``(dk, dv)``; needs the ``Δ`` of :func:`launch_dq`."""
    bsz, heads, n_q, dim = q.shape
    n_k, v_dim = k.shape[2], v.shape[3]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    mask, mstr = _mask_args(key_mask, q)
    mm_bwd_dkdv_kernel[(triton.cdiv(n_k, cfg.dkdv_n), bsz * heads)](
        q, k, v, do, lse, delta, dk, dv, prm, mask,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *dk.stride()[:3], *dv.stride()[:3], *mstr, prm.stride(0) if prm.shape[0] > 1 else 0,
        heads, n_q, n_k, LOG2E * scale, LN2,
        HEAD_DIM=dim, V_DIM=v_dim, BLOCK_M=cfg.dkdv_m, BLOCK_N=cfg.dkdv_n, ORDER=order,
        CAUSAL=causal, HAS_MASK=key_mask is not None, PRECISION=_precision(q),
        num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages,
    )
    return dk, dv


def launch_fused(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, prm: Tensor,
                 key_mask: Tensor | None, causal: bool, scale: float, order: int, cfg: BlockConfig,
                 partials: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dk, dv, partials [B·H, key blocks, NP] fp32)`` of the one-pass backward: a
    small kernel for ``Δ`` (it also zeroes the fp32 dq accumulator), then the fused one."""
    bsz, heads, n_q, dim = q.shape
    n_k, v_dim = k.shape[2], v.shape[3]
    delta = torch.empty(bsz * heads, n_q, device=q.device, dtype=torch.float32)
    dq_acc = torch.empty(bsz * heads, n_q, dim, device=q.device, dtype=torch.float32)
    mm_bwd_delta_kernel[(triton.cdiv(n_q, cfg.dkdv_m), bsz * heads)](
        do, out, delta, dq_acc, *do.stride()[:3], *out.stride()[:3], heads, n_q,
        HEAD_DIM=dim, V_DIM=v_dim, BLOCK_M=cfg.dkdv_m, num_warps=4,
    )
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    num_n = triton.cdiv(n_k, cfg.dkdv_n)
    np_cols = triton.next_power_of_2(max(4 * order, 1))
    part = torch.empty(bsz * heads, num_n, np_cols, device=q.device, dtype=torch.float32)
    mask, mstr = _mask_args(key_mask, q)
    mm_bwd_fused_kernel[(num_n, bsz * heads)](
        q, k, v, do, lse, delta, dq_acc, dk, dv, part, prm, mask,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *dk.stride()[:3], *dv.stride()[:3], *mstr, prm.stride(0) if prm.shape[0] > 1 else 0,
        heads, n_q, n_k, LOG2E * scale, LN2,
        HEAD_DIM=dim, V_DIM=v_dim, BLOCK_M=cfg.dkdv_m, BLOCK_N=cfg.dkdv_n, ORDER=order, NP=np_cols,
        CAUSAL=causal, KEY_MASK=key_mask is not None or n_k % cfg.dkdv_n != 0,
        HAS_MASK=key_mask is not None, PRECISION=_precision(q), PARTIALS=partials,
        num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages,
    )
    dq = dq_acc.view(bsz, heads, n_q, dim).to(q.dtype)  # [B·H, Nq, D] -> [B, H, Nq, D]
    return dq, dk, dv, part


def flash_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                   prm: Tensor, key_mask: Tensor | None, causal: bool, scale: float, order: int,
                   cfg: BlockConfig, param_grad: bool = True
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(dq, dk, dv, partials [B·H, blocks, NP] or None without param_grad)``: the dq
    kernel first (it also stores Δ), then the dk/dv one; or, with ``cfg.fused_bwd`` and
    unless deterministic algorithms are on, the one-pass backward."""
    if do.stride(-1) != 1:
        do = do.contiguous()
    mode = partials_mode(order, param_grad)
    if cfg.fused_bwd and not torch.are_deterministic_algorithms_enabled():
        dq, dk, dv, part = launch_fused(do, q, k, v, out, lse, prm, key_mask, causal, scale, order,
                                        cfg, mode)
        return dq, dk, dv, part if param_grad else None
    dq, delta, part = launch_dq(do, q, k, v, out, lse, prm, key_mask, causal, scale, order, cfg, mode)
    dk, dv = launch_dkdv(do, q, k, v, lse, delta, prm, key_mask, causal, scale, order, cfg)
    return dq, dk, dv, part if param_grad else None
