"""SoftMax with a fixed or learnable temperature: ``softmax(x / T)``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..kernels.rows import check_dim
from .base import FusedForm, Normalizer, check_mask, compute_dtype, masked_softmax, no_autocast
from .losses import cross_entropy


class SoftMax(Normalizer):
    """``softmax(x / T)``.

    Args:
        temperature: the (initial) temperature ``T > 0``.
        learnable: learn ``log T`` (a no-weight-decay parameter).
    """

    is_modulated_softmax = True
    fused_form_guards = (*Normalizer.fused_form_guards, "temperature", "is_identity")

    def __init__(self, temperature: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.learnable = learnable
        self._fixed_t = float(temperature)  # the initial value when learnable
        if learnable:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp() if self.learnable else torch.tensor(self._fixed_t)

    @property
    def is_identity(self) -> bool:
        """``True`` when this is the plain softmax (attention may then call SDPA as is)."""
        return not self.learnable and self._fixed_t == 1.0

    def _fused_form(self) -> FusedForm:
        if self.learnable:
            return FusedForm("temperature", temperature=self.temperature,
                             log_temperature=self.log_temperature)
        if self.is_identity:
            return FusedForm("identity")
        return FusedForm("temperature", temperature=self._fixed_t)

    def modulate(self, scores: Tensor) -> Tensor:
        if self.is_identity:
            return scores
        if not self.learnable:
            return scores / self._fixed_t
        return scores / self.temperature.to(scores.dtype)

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        dim = check_dim(scores, dim)
        mask = check_mask(scores, mask)
        with no_autocast(scores):
            x = scores.to(compute_dtype(scores))
            return masked_softmax(self.modulate(x), mask, dim).to(scores.dtype)

    def loss(self, logits: Tensor, target: Tensor, *, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        modulated = self.modulate(logits.to(compute_dtype(logits)))
        return cross_entropy(modulated, target, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, reduction=reduction)

    def extra_repr(self) -> str:
        return f"temperature={self._fixed_t}, learnable={self.learnable}"
