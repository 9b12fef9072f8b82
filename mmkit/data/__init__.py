"""LightningDataModules: embedded offline defaults plus the real formats."""

from .images import ImageDataModule
from .lm import TextDataModule
from .mnist5k import load_mnist5k
from .repeated_aug import RepeatedAugSampler
from .translation import TranslationDataModule

__all__ = ["ImageDataModule", "RepeatedAugSampler", "TextDataModule", "TranslationDataModule",
           "load_mnist5k"]
