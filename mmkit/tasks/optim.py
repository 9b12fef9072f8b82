"""Optimizer parameter groups and the warmup + cosine schedule shared by the tasks."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..normalizers import Normalizer


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: with weight decay (matrices, convolutions) and without.

    No decay for norms and biases (every parameter with ``ndim <= 1``), for the
    names the model lists in ``no_weight_decay()`` (position embeddings, class
    token), and for every normalizer parameter (``Normalizer.no_decay_parameters``,
    which includes the 2-D per-head ones). The decay group keeps the optimizer's
    own ``weight_decay``.
    """
    skip_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, Normalizer)
                    for p in m.no_decay_parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if param.ndim <= 1 or name in skip_names or leaf in skip_names or id(param) in no_decay_ids:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup from ~0 over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio`` times the base learning rate at ``total_steps``; stepped per
    optimizer step."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
