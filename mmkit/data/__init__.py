"""LightningDataModules: embedded offline defaults plus the real formats."""

from .images import ImageDataModule
from .lm import TextDataModule
from .mnist5k import load_mnist5k
from .translation import TranslationDataModule

__all__ = ["ImageDataModule", "TextDataModule", "TranslationDataModule", "load_mnist5k"]
