"""Optimizer parameter groups and the warmup + cosine schedule shared by the tasks."""

from __future__ import annotations

import math

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..normalizers import Normalizer


def param_groups(model: nn.Module, layer_decay: float | None = None,
                 normalizer_lr: float | None = None) -> list[dict]:
    """Two groups: with weight decay (matrices, convolutions) and without.

    No decay for norms and biases (every parameter with ``ndim <= 1``), for the
    names the model lists in ``no_weight_decay()`` (position embeddings, class
    token), and for every normalizer parameter (``Normalizer.no_decay_parameters``,
    which includes the 2-D per-head ones). The decay group keeps the optimizer's
    own ``weight_decay``.

    Fine-tuning options (both off by default, which gives exactly the two groups above):

    - ``layer_decay``: layer-wise learning-rate decay for a network with ``blocks`` (BEiT/timm's
      rule): the patch embedding, positions and class token are layer 0, block ``i`` layer
      ``i + 1``, everything after the blocks layer ``depth + 1``; layer ``l``'s groups carry
      ``lr_scale = layer_decay ** (depth + 1 - l)``, which :func:`apply_lr_scales` multiplies
      into the optimizer's learning rates;
    - ``normalizer_lr``: the normalizer parameters (MultiMax's SegLU scalars, a learnable α)
      in their own group with this learning rate (not scaled by ``layer_decay``).
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if normalizer_lr is not None and not normalizer_lr > 0:
        raise ValueError(f"normalizer_lr must be positive, got {normalizer_lr}")
    skip_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    normalizer_ids = {id(p) for m in model.modules() if isinstance(m, Normalizer) for p in m.parameters()}
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, Normalizer)
                    for p in m.no_decay_parameters()}
    depth = _depth(model) if layer_decay is not None else 0
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        decays = not (param.ndim <= 1 or name in skip_names or leaf in skip_names
                      or id(param) in no_decay_ids)
        own = normalizer_lr is not None and id(param) in normalizer_ids
        layer = _layer_id(name, depth) if layer_decay is not None and not own else None
        key = (own, layer, decays)
        if key not in groups:
            group: dict = {"params": []} if decays else {"params": [], "weight_decay": 0.0}
            if own:
                group["lr"] = normalizer_lr
            if layer is not None:
                group["lr_scale"] = layer_decay ** (depth + 1 - layer)
            groups[key] = group
        groups[key]["params"].append(param)
    if layer_decay is None and normalizer_lr is None:  # the two plain groups, even when one is empty
        return [groups.get((False, None, True), {"params": []}),
                groups.get((False, None, False), {"params": [], "weight_decay": 0.0})]
    return list(groups.values())


def apply_lr_scales(optimizer: Optimizer) -> Optimizer:
    """Multiply each group's ``lr`` by its ``lr_scale`` (from :func:`param_groups`); call it
    once, on a new optimizer, before a scheduler records the base learning rates."""
    for group in optimizer.param_groups:
        if "lr_scale" in group:
            group["lr"] = group["lr"] * group["lr_scale"]
    return optimizer


def _depth(model: nn.Module) -> int:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"layer_decay needs a network with a `blocks` list (as mmkit's ViT); "
                         f"{type(model).__name__} has none")
    return len(blocks)


def _layer_id(name: str, depth: int) -> int:
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.split(".")[0] in ("patch_embed", "pos_embed", "cls_token"):
        return 0
    return depth + 1


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
