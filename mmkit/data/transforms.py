"""Training and evaluation transforms (torchvision transforms v2).

Inputs are PIL images or uint8 tensors ``[C, H, W]``; outputs are normalized
float32 tensors ``[C, img_size, img_size]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torchvision.transforms import v2

Augment = Literal["none", "light", "deit"]


def _to_float(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def eval_transform(img_size: int, mean: tuple[float, ...], std: tuple[float, ...], *,
                   native: int | None) -> v2.Transform:
    """Resize (shorter side to ``img_size / 0.875``) and center-crop when the size
    differs from the dataset's native one, or always when ``native`` is ``None`` (files of
    any size, e.g. an image folder); then scale and normalize."""
    resize: list[v2.Transform] = []
    if native is None or img_size != native:
        resize = [v2.Resize(round(img_size / 0.875), antialias=True), v2.CenterCrop(img_size)]
    return v2.Compose([v2.ToImage(), *resize, *_to_float(mean, std)])


def train_transform(augment: Augment, img_size: int, mean: tuple[float, ...],
                    std: tuple[float, ...], *, flip: bool, native: int | None) -> v2.Transform:
    """``none``: as evaluation. ``light``: padded random crop (+ horizontal flip).
    ``deit``: random resized crop, flip, RandAugment(2, 9), random erasing 0.25."""
    if augment == "none":
        return eval_transform(img_size, mean, std, native=native)
    flips = [v2.RandomHorizontalFlip()] if flip else []
    if augment == "light":
        resize = [] if native is not None and img_size == native else [v2.Resize(img_size, antialias=True),
                                                v2.CenterCrop(img_size)]
        crop = v2.RandomCrop(img_size, padding=max(img_size // 8, 1))
        return v2.Compose([v2.ToImage(), *resize, crop, *flips, *_to_float(mean, std)])
    if augment == "deit":
        return v2.Compose([
            v2.ToImage(), v2.RandomResizedCrop(img_size, antialias=True), *flips,
            v2.RandAugment(num_ops=2, magnitude=9), *_to_float(mean, std),
            v2.RandomErasing(p=0.25),
        ])
    raise ValueError(f"unknown augment {augment!r}; choose none, light or deit")
