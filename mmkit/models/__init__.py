"""The models: plain ``nn.Module`` networks, readable top to bottom."""

from .transformer_xl import PRESETS as TXL_PRESETS
from .transformer_xl import TransformerXL
from .vit import PRESETS as VIT_PRESETS
from .vit import VisionTransformer

__all__ = ["VisionTransformer", "VIT_PRESETS", "TransformerXL", "TXL_PRESETS"]
