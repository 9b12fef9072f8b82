"""How the CLI writes durations, numbers, counts and metrics in its progress and summary lines."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

HIDDEN_METRICS = ("v_num",)  # get_metrics()'s logger version: not a metric


def duration(seconds: float) -> str:
    """``seconds`` as ``45s``, ``3m07s``, ``2h05m`` or ``1d03h``; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def number(value: Any) -> str:
    """A metric to 4 significant digits (a non-number as it is)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def metrics_text(metrics: Mapping[str, Any], prefixes: tuple[str, ...] = ()) -> str:
    """``k=v`` for each metric (sorted, to 4 significant digits), those starting with one of
    ``prefixes`` when given; the logger's version number is left out."""
    shown = [f"{k}={number(v)}" for k, v in sorted(metrics.items())
             if k not in HIDDEN_METRICS and (not prefixes or k.startswith(prefixes))]
    return " ".join(shown)


def count(n: int, what: str) -> str:
    """``1 step``, ``3 steps``."""
    return f"{n} {what}" + ("" if n == 1 else "s")
