"""Attention and transformer building blocks (pure torch; no Lightning)."""

from . import kernels  # mmkit.nn.kernels: the public re-export of mmkit.kernels.flash
from .adaptive import AdaptiveHead, AdaptiveInput
from .attention import KVCache, MultiHeadAttention, attend
from .blocks import Block, DropPath, Mlp, Residual
from .masks import causal_mask, merge_masks, padding_mask

__all__ = ["kernels", "attend", "MultiHeadAttention", "KVCache", "Block", "DropPath", "Mlp", "Residual",
           "causal_mask", "padding_mask", "merge_masks", "AdaptiveInput", "AdaptiveHead"]
