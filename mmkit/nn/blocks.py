"""Transformer building blocks shared by the models: the MLP (all three models), the
residual sublayer (the translator's layers, Transformer-XL's feed-forward block), drop-path
and the ViT's pre-norm encoder block."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..normalizers import NormalizerSpec
from .attention import MultiHeadAttention


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


class Mlp(nn.Sequential):
    """Linear -> activation (GELU or ReLU) -> dropout -> Linear -> dropout.

    Its weights are ``0.*`` and ``3.*`` in every model (timm's ``fc1``/``fc2``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, activation: str = "gelu") -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        super().__init__(nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Dropout(drop),
                         nn.Linear(hidden, dim), nn.Dropout(drop))


class Residual(nn.Module):
    """A residual connection with its LayerNorm around one sublayer ``fn``: post-norm
    ``LN(x + drop(fn(x)))`` (the original Transformer's, fairseq's default) or pre-norm
    ``x + drop(fn(LN(x)))``."""

    def __init__(self, dim: int, dropout: float = 0.0, pre_norm: bool = False) -> None:
        super().__init__()
        self.norm, self.drop, self.pre_norm = nn.LayerNorm(dim), nn.Dropout(dropout), pre_norm

    def forward(self, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return x + self.drop(fn(self.norm(x)))
        return self.norm(x + self.drop(fn(x)))


class Block(nn.Module):
    """Pre-norm transformer encoder block: ``x + attn(LN(x))``, ``x + mlp(LN(x))``; ``norm_eps``
    is the LayerNorms' epsilon (PyTorch's 1e-5 by default; DeiT uses 1e-6)."""

    def __init__(self, dim: int, num_heads: int, normalizer: NormalizerSpec = "softmax", *,
                 mlp_ratio: float = 4.0, per_head: bool = False, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, num_heads, normalizer, per_head=per_head,
                                       qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        h = self.attn(self.norm1(x), mask=mask, need_weights=need_weights)
        probs = None
        if need_weights:
            h, probs = h
        x = x + self.drop_path(h)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, probs) if need_weights else x
