"""Thin LightningModules: loss, metrics, logging and optimizer parameter groups."""

from .classification import ImageClassification
from .language_modeling import LanguageModeling
from .optim import param_groups, warmup_cosine
from .translation import Translation, inverse_sqrt

__all__ = ["ImageClassification", "LanguageModeling", "Translation", "param_groups",
           "warmup_cosine", "inverse_sqrt"]
