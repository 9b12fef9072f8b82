"""The models: plain ``nn.Module`` networks, readable top to bottom."""

from .base import ImageClassifierNetwork, LanguageModelNetwork, Network, TranslationNetwork
from .pretrained import load_weights, vit_from_timm
from .saving import build_network, load_pretrained, save_pretrained
from .seq2seq import PRESETS as SEQ2SEQ_PRESETS
from .seq2seq import Seq2SeqTransformer
from .transformer_xl import PRESETS as TXL_PRESETS
from .transformer_xl import TransformerXL
from .vit import PRESETS as VIT_PRESETS
from .vit import VisionTransformer

__all__ = ["Network", "ImageClassifierNetwork", "LanguageModelNetwork", "TranslationNetwork",
           "VisionTransformer", "VIT_PRESETS", "TransformerXL", "TXL_PRESETS",
           "Seq2SeqTransformer", "SEQ2SEQ_PRESETS",
           "vit_from_timm", "load_weights", "save_pretrained", "load_pretrained", "build_network"]
