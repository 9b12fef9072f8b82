"""The normalizer contract and the helpers every normalizer shares.

A normalizer maps scores to probabilities along one dimension::

    probs = normalizer(scores, mask=None, dim=-1)

``mask`` is a boolean tensor broadcastable to ``scores``; ``True`` marks the
entries that take part (the convention of ``F.scaled_dot_product_attention``).
Entries of ``scores`` equal to ``-inf`` are treated as masked as well. Any
modulation (temperature, SegLU) is applied *before* the mask, so ``-inf`` never
reaches a modulator. Masked entries get probability 0; a fully masked row is all
zeros, with finite gradients.

Half-precision inputs (fp16/bf16, from autocast or not) are computed in fp32 and
returned in the input dtype.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ..kernels.rows import check_dim as check_dim  # kept importable here for normalizer authors

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True, eq=False)
class FusedForm:
    """A normalizer declared, as data, to be ``softmax(map(scores))`` for an element-wise map.

    Fast paths (SDPA, the MultiMax kernels, the fused LM head) read only this. ``kind``:

    - ``"identity"``: ``map(x) = x``;
    - ``"temperature"``: ``map(x) = x / temperature``, with ``temperature`` a Python float
      (fixed) or a 0-d tensor (learnt, autograd-connected to its parameters); a learnt one
      may also give ``log_temperature``, the parameter it is ``exp`` of, so that kernels
      can return that parameter's gradient directly;
    - ``"seglu"``: ``map(x) = seglu(x, ranges, ts)`` of order ``order``, with ``ranges`` and
      ``ts`` laid out as in :class:`~mmkit.normalizers.MultiMax`: ``[2N]`` shared or
      ``[H, 2N]`` per head.
    """

    kind: Literal["identity", "temperature", "seglu"]
    temperature: float | Tensor | None = None
    log_temperature: Tensor | None = None
    ranges: Tensor | None = None
    ts: Tensor | None = None
    order: int = 0

    def __post_init__(self) -> None:
        if self.kind == "temperature" and self.temperature is None:
            raise ValueError("a 'temperature' form needs its temperature")
        if self.kind == "seglu":
            if self.ranges is None or self.ts is None or self.ranges.shape != self.ts.shape:
                raise ValueError("a 'seglu' form needs ranges and ts of one shape")
            if self.ranges.shape[-1] != 2 * self.order or self.order < 1:
                raise ValueError(f"SegLU of order {self.order} needs [..., {2 * self.order}] parameters, "
                                 f"got {tuple(self.ranges.shape)}")
        elif self.kind not in ("identity", "temperature"):
            raise ValueError(f"unknown fused form {self.kind!r}")

    @property
    def is_softmax(self) -> bool:
        """``True`` for the identity and temperature forms (``F.scaled_dot_product_attention``)."""
        return self.kind != "seglu"

    @property
    def per_head(self) -> bool:
        """``True`` when the map's parameters are per head (``[H, 2N]``)."""
        return self.ranges is not None and self.ranges.ndim == 2


class Normalizer(nn.Module):
    """Base class: ``forward(scores, mask=None, dim=-1) -> probs``.

    Subclasses set ``is_modulated_softmax = True`` when they equal
    ``softmax(modulate(scores))`` for an element-wise ``modulate``; :meth:`log_probs` and
    :meth:`ranking` then use ``modulate``. A subclass with a fast path declares it by
    overriding :meth:`_fused_form` (see :meth:`fused_form` for the rule that keeps the
    declaration from leaking into subclasses that change the maths).
    """

    #: ``True`` when ``forward(x) == softmax(self.modulate(x))`` element-wise.
    is_modulated_softmax: ClassVar[bool] = False
    #: Whether ablation grids run it by default and the CLI help lists it (:data:`GRID_NORMALIZERS`).
    in_default_grid: ClassVar[bool] = True
    #: The methods whose maths a declared fused form stands for (see :meth:`fused_form`).
    fused_form_guards: ClassVar[tuple[str, ...]] = ("forward", "modulate", "loss")

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        raise NotImplementedError

    def modulate(self, scores: Tensor) -> Tensor:
        """The element-wise modulation before softmax (only for modulated softmaxes)."""
        raise NotImplementedError(f"{type(self).__name__} is not a modulated softmax")

    def fused_form(self) -> FusedForm | None:
        """This normalizer as ``softmax(map(x))`` (a :class:`FusedForm`), or ``None``.

        The class that declares a form is the nearest one in the MRO that defines
        :meth:`_fused_form`. The form is returned only when the instance's class resolves
        every method named in :attr:`fused_form_guards` (``forward``, ``modulate``, ``loss``
        and any a declaring class adds) to the declaring class's own: a subclass that
        overrides one of them changes the maths, so it gets ``None`` (the reference path)
        until it declares a form of its own by defining ``_fused_form``. Fast paths read
        nothing else, so they can never silently skip an override.
        """
        return self._fused_form() if _form_applies(type(self)) else None

    def _fused_form(self) -> FusedForm | None:
        """The declaration itself; override it in a class whose maths has a fused form."""
        return None

    def modulated_softmax(self) -> bool:
        """``True`` when this instance computes ``softmax(self.modulate(x))``: its class, or the
        class that set :attr:`is_modulated_softmax`, did not change ``forward`` since."""
        return _modulated(type(self))

    def log_probs(self, logits: Tensor, dim: int = -1) -> Tensor:
        """``log normalizer(logits)`` in fp32 at least: ``log_softmax(modulate(logits))`` for a
        modulated softmax, else the log of the probabilities (``-inf`` where they are 0)."""
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.modulated_softmax():
            return torch.log_softmax(self.modulate(z), dim=dim)
        return self(z, dim=dim).log()

    def ranking(self, logits: Tensor) -> Tensor:
        """Scores whose order along the last dim is the normalizer's order (e.g. for top-k)."""
        return self.modulate(logits) if self.modulated_softmax() else logits

    def loss(
        self,
        logits: Tensor,
        target: Tensor,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> Tensor:
        """The output-layer loss that matches this normalizer (classes on the last dim)."""
        raise NotImplementedError

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters that optimizers must exclude from weight decay (all of ours)."""
        return [p for p in self.parameters() if p.requires_grad]


def _declarer(cls: type, attr: str) -> type | None:
    """The nearest class in ``cls``'s MRO whose own namespace defines ``attr``."""
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


@cache
def _form_applies(cls: type[Normalizer]) -> bool:
    """Whether ``cls`` keeps the maths of the class that declared its fused form."""
    owner = _declarer(cls, "_fused_form")
    if owner is None or owner is Normalizer:
        return False
    return all(getattr(cls, name, None) is getattr(owner, name, None) for name in cls.fused_form_guards)


@cache
def _modulated(cls: type[Normalizer]) -> bool:
    owner = _declarer(cls, "is_modulated_softmax")
    return bool(cls.is_modulated_softmax) and cls.forward is getattr(owner, "forward", None)


def check_mask(scores: Tensor, mask: Tensor | None) -> Tensor | None:
    """Validate ``mask`` and merge ``-inf`` entries of ``scores`` into it."""
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor (True = keep), got dtype {mask.dtype}; "
                "convert an additive float mask with `mask = additive_mask == 0`"
            )
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to scores of shape "
                f"{tuple(scores.shape)}"
            ) from None
    if scores.numel() and bool(torch.isneginf(scores.amin())):  # a cheap test first
        keep = ~torch.isneginf(scores)
        mask = keep if mask is None else mask & keep
    return mask


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half inputs, the input dtype otherwise."""
    return torch.float32 if x.dtype in LOW_PRECISION else x.dtype


def no_autocast(x: Tensor):
    """A context that disables autocast on ``x``'s device (we manage precision ourselves)."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return nullcontext()


def masked_softmax(y: Tensor, mask: Tensor | None, dim: int) -> Tensor:
    """Softmax with a keep-mask; fully masked rows give zeros, never NaN."""
    if mask is None:
        return torch.softmax(y, dim)
    # A finite fill keeps fully masked rows finite (uniform), the product zeroes them.
    y = y.masked_fill(~mask, torch.finfo(y.dtype).min)
    return torch.softmax(y, dim) * mask


def per_head_view(param: Tensor, scores: Tensor, dim: int) -> Tensor:
    """Reshape a per-head parameter ``[..., H]`` to ``[..., H, 1, 1]``, which broadcasts
    against ``[..., H, Nq, Nk]`` scores.

    Per-head normalizers expect the head axis third from last, and ``dim`` one of the
    last two axes (the attention layout).
    """
    heads = param.shape[-1]
    if scores.ndim < 3 or scores.shape[-3] != heads or dim < scores.ndim - 2:
        raise ValueError(
            f"a per-head normalizer with {heads} heads expects scores shaped "
            f"[..., {heads}, Nq, Nk] normalized along one of the last two dims; "
            f"got shape {tuple(scores.shape)} and dim={dim - scores.ndim}"
        )
    return param[..., None, None]
