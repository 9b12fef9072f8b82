"""Attention with a pluggable normalizer: one ``attend()`` that every model calls.

Dispatch (fastest correct path first) reads only the normalizer's declared
:meth:`~mmkit.normalizers.Normalizer.fused_form`:

1. An identity or temperature form (SoftMax) -> ``F.scaled_dot_product_attention``.
   A temperature ``T`` is folded into the queries (``softmax(q·kᵀ/T) = SDPA(q/T)``),
   so learnable temperatures stay on the fused path too.
2. A SegLU form (MultiMax) on CUDA -> the fused kernel in :mod:`mmkit.kernels.flash`,
   given the form's ``ranges`` and ``ts``, when it applies (no bias, no dropout).
3. Everything else (no form, e.g. the sparse normalizers or a subclass that changed
   the maths) -> the materialized reference path: scores, then the normalizer with
   the mask (so ``-inf`` never meets a modulator), then dropout, then ``@ v``.

``need_weights=True`` always takes the materialized path and also returns the
probabilities; nothing is ever stored on a module.

:func:`capture_attention` lets analysis code (e.g. the attention-statistics
callback) see every call's scores and probabilities: while it is active, ``attend``
takes the materialized path and hands them to a function. Inactive, it costs one
``ContextVar`` lookup per call.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import flash
from ..normalizers import FusedForm, Normalizer, NormalizerSpec, make_normalizer
from .masks import merge_masks

#: ``fn(normalizer, scores, probs, keep)`` with detached ``scores`` and ``probs``
#: ``[B, H, Nq, Nk]`` (scores after scale and bias, before the normalizer) and the
#: bool keep-mask (broadcastable to them, True = attend) or ``None``.
CaptureFn = Callable[[Normalizer, Tensor, Tensor, "Tensor | None"], None]
_CAPTURE: ContextVar[tuple[CaptureFn, ...]] = ContextVar("mmkit_attention_capture", default=())


@contextmanager
def capture_attention(fn: CaptureFn) -> Iterator[None]:
    """While active, every :func:`attend` call takes the materialized path and calls
    ``fn(normalizer, scores, probs, keep)`` (see :data:`CaptureFn`).

    Outputs are unchanged up to floating-point rounding (SoftMax leaves SDPA; MultiMax
    leaves its fused kernel). Nothing is stored on modules; the active functions live
    in a ``ContextVar``, so a capture in one thread does not see other threads' calls.
    Captures nest: every active ``fn`` is called, innermost last.
    """
    token = _CAPTURE.set((*_CAPTURE.get(), fn))
    try:
        yield
    finally:
        _CAPTURE.reset(token)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "attend expects q, k, v shaped [B, H, N, D]; got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"q/k head dims ({q.shape[-1]}, {k.shape[-1]}) or k/v lengths "
            f"({k.shape[-2]}, {v.shape[-2]}) differ"
        )
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True = attend), got {mask.dtype}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")


def _divide(x: Tensor, form: FusedForm) -> Tensor:
    """``x / T``; a learnt ``T`` is taken afresh from ``log T`` for each use, as
    ``SoftMax.modulate`` does, so parameter gradients are summed in the same order."""
    t = form.temperature if form.log_temperature is None else form.log_temperature.exp()
    return x / (t if isinstance(t, float) else t.to(x.dtype))


def _sdpa(q: Tensor, k: Tensor, v: Tensor, form: FusedForm, mask: Tensor | None,
          causal: bool, bias: Tensor | None, dropout_p: float, scale: float) -> Tensor:
    if form.kind == "temperature":
        q = _divide(q, form)  # q / T
        bias = None if bias is None else _divide(bias, form)
    nq, nk = q.shape[-2], k.shape[-2]
    if mask is None and bias is None and (not causal or nq == nk):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal,
                                              scale=scale)
    keep = merge_masks(mask, causal, nq, nk, q.device)
    has_key = None
    if keep is not None:
        # Rows without any key: attend to everything, then zero the output, so that
        # every backend gives 0 (never NaN) with finite gradients.
        has_key = keep.any(-1, keepdim=True)  # [..., Nq, 1]
        keep = keep | ~has_key
    attn_mask: Tensor | None = keep
    if bias is not None:
        attn_mask = bias.to(q.dtype)
        if keep is not None:
            attn_mask = attn_mask.masked_fill(~keep, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                         scale=scale)
    return out if has_key is None else out * has_key


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    normalizer: Normalizer | NormalizerSpec,
    *,
    mask: Tensor | None = None,
    causal: bool = False,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    scale: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``normalizer(q·kᵀ·scale + bias, mask) @ v``.

    Args:
        q, k, v: ``[B, H, Nq, D]``, ``[B, H, Nk, D]``, ``[B, H, Nk, Dv]``.
        normalizer: any :class:`~mmkit.normalizers.Normalizer` (per-head ones expect H), or a
            spec of one without learnable parameters (``"entmax15"``, ``{"name": "entmax",
            "alpha": 1.3}``; see :func:`as_normalizer`).
        mask: bool keep-mask broadcastable to ``[B, H, Nq, Nk]`` (True = attend).
        causal: add a bottom-right aligned causal mask (queries are the last Nq keys).
        bias: additive float scores broadcastable to ``[B, H, Nq, Nk]`` (e.g. relative
            positions), added before the normalizer.
        dropout_p: dropout on the probabilities; pass 0 in eval.
        need_weights: also return the probabilities ``[B, H, Nq, Nk]``.
        scale: score scale, ``1/sqrt(D)`` by default.

    Returns:
        ``[B, H, Nq, Dv]``, or ``(output, probs)`` with ``need_weights``. Query rows
        with no key to attend to give zeros.
    """
    _check_inputs(q, k, v, mask, dropout_p)
    normalizer = as_normalizer(normalizer)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    captures = _CAPTURE.get()
    form = None if need_weights or captures else normalizer.fused_form()
    if form is not None:
        if form.is_softmax:
            return _sdpa(q, k, v, form, mask, causal, bias, dropout_p, scale)
        if q.is_cuda and bias is None and dropout_p == 0.0:
            # The fused SegLU flash-attention kernel; None means it does not apply.
            out = flash.multimax_attention(q, k, v, form.ranges, form.ts, mask=mask, causal=causal,
                                           scale=scale)
            if out is not None:
                return out
    keep = merge_masks(mask, causal, q.shape[-2], k.shape[-2], q.device)
    scores = (q * scale) @ k.transpose(-2, -1)  # [B, H, Nq, Nk]
    if bias is not None:
        scores = scores + bias
    probs = normalizer(scores, mask=keep, dim=-1)
    for fn in captures:
        fn(normalizer, scores.detach(), probs.detach(), keep)
    dropped = F.dropout(probs, dropout_p) if dropout_p > 0 else probs
    out = dropped @ v  # [B, H, Nq, Dv]
    return (out, probs) if need_weights else out


@dataclass
class KVCache:
    """Projected keys and values ``[B, H, N, Dh]`` of one attention layer.

    Passed to :class:`MultiHeadAttention` for incremental decoding; ``static`` marks a
    cross-attention cache, filled once from the encoder output.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    static: bool = False

    def reorder(self, index: Tensor) -> None:
        """Keep the rows ``index`` of the batch (beam search)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention that owns its normalizer.

    Each instance builds its own normalizer from ``normalizer``, so normalizer
    parameters (MultiMax's SegLU scalars, a learnable α) are per layer, as in the
    paper; ``per_head=True`` gives each head its own (MultiMax, learnable EntMax).

    Args:
        dim: model width; ``num_heads`` must divide it.
        num_heads: number of heads.
        normalizer: a registry name, class path or dict (see ``NormalizerSpec``).
        per_head: one set of normalizer parameters per head.
        qkv_bias: biases in the q/k/v projections.
        attn_drop: dropout on the attention probabilities.
        proj_drop: dropout after the output projection.
        kv_dim: width of the cross-attention context (default ``dim``).
    """

    def __init__(self, dim: int, num_heads: int, normalizer: NormalizerSpec = "softmax", *,
                 per_head: bool = False, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, kv_dim: int | None = None) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must be positive and divide dim ({dim})")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)
        self.normalizer = build_attention_normalizer(normalizer, num_heads if per_head else None)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, Dh]

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: Tensor | None = None,
                causal: bool = False, bias: Tensor | None = None, need_weights: bool = False,
                cache: KVCache | None = None, normalizer: Normalizer | NormalizerSpec | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``[B, Nq, C]`` attends to ``context`` ``[B, Nk, C]`` (itself by default).

        With ``cache`` (incremental decoding), self-attention appends this step's keys
        and values to it and attends to all of them (``causal`` is aligned to the end);
        a ``static`` cache (cross-attention) projects ``context`` once and reuses it.
        ``normalizer`` (a module, or a spec as :func:`attend` takes) replaces the layer's own
        for this call only (e.g. softmax in the reference's incremental decoding).
        """
        q = self._heads(self.q(x))
        if cache is not None and cache.static and cache.k is not None:
            k, v = cache.k, cache.v
        else:
            k, v = (self._heads(t) for t in self.kv(x if context is None else context).chunk(2, -1))
            if cache is not None:
                if cache.k is not None:
                    k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
        out = attend(q, k, v, self.normalizer if normalizer is None else normalizer, mask=mask,
                     causal=causal,
                     bias=bias, dropout_p=self.attn_drop if self.training else 0.0,
                     need_weights=need_weights)
        probs = None
        if need_weights:
            out, probs = out
        b, _, n, _ = out.shape
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, -1)))  # [B, Nq, C]
        return (out, probs) if need_weights else out


def as_normalizer(normalizer: Normalizer | NormalizerSpec) -> Normalizer:
    """``normalizer`` itself when it is a module; a spec (name, class path or dict) builds one,
    once per spec, in eval mode. A spec whose normalizer has learnable parameters is refused:
    built on the fly they would be an untrained initialisation, a silently wrong attention."""
    if isinstance(normalizer, Normalizer):
        return normalizer
    if not isinstance(normalizer, (str, dict)):
        raise ValueError(f"normalizer must be a Normalizer module or a spec (a name such as 'entmax15', "
                         f"a class path or a dict), got {type(normalizer).__name__}")
    return _from_spec(json.dumps(normalizer, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _from_spec(spec_json: str) -> Normalizer:
    spec = json.loads(spec_json)
    built = make_normalizer(spec).eval()
    if any(p.requires_grad for p in built.parameters()):
        raise ValueError(f"normalizer {spec!r} has learnable parameters; a spec would give them a fresh, "
                         "untrained value at every use: build the module once (e.g. MultiMax()) and pass "
                         "it, so its parameters are trained with the model")
    return built


def build_attention_normalizer(spec: NormalizerSpec, num_heads: int | None = None) -> Normalizer:
    """A fresh normalizer for one attention layer (with ``num_heads``: per-head parameters)."""
    if num_heads is None:
        return make_normalizer(spec)
    try:
        return make_normalizer(spec, num_heads=num_heads)
    except ValueError as err:
        raise ValueError(f"per_head=True needs a normalizer with per-head parameters "
                         f"(multimax, or entmax with learnable=True): {err}") from None
