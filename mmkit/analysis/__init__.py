"""Analysis tools: the paper's sparsity and multi-modality measures, figures, callbacks."""

from .measures import multimodality, sparsity

__all__ = ["multimodality", "sparsity"]
