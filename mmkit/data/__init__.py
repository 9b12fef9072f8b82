"""LightningDataModules: embedded offline defaults plus the real formats."""

from .images import ImageDataModule
from .lm import TextDataModule
from .mnist5k import load_mnist5k

__all__ = ["ImageDataModule", "TextDataModule", "load_mnist5k"]
