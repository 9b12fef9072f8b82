"""Thin LightningModules: loss, metrics, logging and optimizer parameter groups."""

from .classification import ImageClassification
from .optim import param_groups, warmup_cosine

__all__ = ["ImageClassification", "param_groups", "warmup_cosine"]
