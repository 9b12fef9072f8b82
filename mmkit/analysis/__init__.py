"""Analysis tools: the paper's sparsity and multi-modality measures, per-layer attention
statistics (and a Lightning callback that logs them), and figures."""

from __future__ import annotations

from typing import Any

from .measures import multimodality, row_mean_eps, sparsity
from .stats import attention_sums, summarize

__all__ = ["AttentionStatistics", "attention_sums", "multimodality", "row_mean_eps", "sparsity",
           "summarize"]


def __getattr__(name: str) -> Any:
    # The callback imports Lightning; load it only when asked for.
    if name == "AttentionStatistics":
        from .callback import AttentionStatistics

        return AttentionStatistics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
