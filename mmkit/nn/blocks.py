"""Transformer building blocks shared by the models."""

from __future__ import annotations

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


class Mlp(nn.Sequential):
    """Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop),
                         nn.Linear(hidden, dim), nn.Dropout(drop))


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
