"""LightningDataModules: embedded offline defaults plus the real formats."""

from .images import ImageDataModule
from .mnist5k import load_mnist5k

__all__ = ["ImageDataModule", "load_mnist5k"]
