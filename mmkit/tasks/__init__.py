"""Thin LightningModules: loss, metrics, logging and optimizer parameter groups."""

from .classification import ImageClassification
from .language_modeling import LanguageModeling
from .optim import param_groups, warmup_cosine

__all__ = ["ImageClassification", "LanguageModeling", "param_groups", "warmup_cosine"]
