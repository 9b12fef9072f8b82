"""The models: plain ``nn.Module`` networks, readable top to bottom."""

from .vit import PRESETS as VIT_PRESETS
from .vit import VisionTransformer

__all__ = ["VisionTransformer", "VIT_PRESETS"]
