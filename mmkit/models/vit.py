"""A DeiT-style Vision Transformer with a pluggable attention and output normalizer.

Patch embedding -> (+ class token) + learned positions -> pre-norm blocks with
drop-path -> final LayerNorm -> global average pooling (the paper's choice for
both SoftMax and MultiMax) or the class token -> linear head. Every attention
layer builds its own normalizer from ``normalizer``; ``output_normalizer`` is the
paper's "output layer" normalizer, whose ``loss`` the task uses.

Initialisation and norms follow DeiT (timm 0.3.2, which DeiT and the official MultiMax
code build on) by default: every Linear weight ``trunc_normal(std=0.02)`` with zero bias,
the position embedding and class token ``trunc_normal(std=0.02)``, LayerNorms weight 1 and
bias 0 with ``eps=1e-6``, and the patch-embedding convolution left at PyTorch's default
(timm does not re-initialise it). The truncation bounds are timm's absolute ``[-2, 2]``
(100 std), so the draws are effectively normal.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..nn import Block
from ..normalizers import Normalizer, NormalizerSpec, make_normalizer
from .base import ImageClassifierNetwork
from .sizes import check_positive, check_rates, resolve_size

#: Width, depth, heads and MLP ratio of the named sizes.
PRESETS: dict[str, dict[str, float]] = {
    "test": dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
    "mini": dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),  # DeiT-Ti
    "small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),  # DeiT-S
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),  # DeiT-B
}
Preset = Literal["test", "mini", "tiny", "small", "base"]
Init = Literal["deit", "xavier"]


class VisionTransformer(ImageClassifierNetwork):
    """DeiT-style ViT; ``forward(images [B, C, H, W]) -> logits [B, num_classes]``.

    Args:
        preset: named size (see :data:`PRESETS`); explicit sizes below override it.
        img_size: input height and width; ``patch_size`` must divide it.
        patch_size: side of the square patches.
        in_chans: image channels.
        num_classes: classifier outputs.
        embed_dim, depth, num_heads, mlp_ratio: override the preset's size.
        drop_rate: dropout after the position embedding, in the MLPs and projections.
        attn_drop_rate: dropout on attention probabilities.
        drop_path_rate: stochastic depth, rising linearly to this value in the last block.
        pool: ``"avg"`` (global average pooling of the patch tokens) or ``"cls"``
            (a class token).
        normalizer: the attention normalizer: a registry name (softmax, sparsemax, entmax15, entmax,
            multimax, evsoftmax), a class path, or a dict such as ``{name: entmax, alpha: 1.3}``;
            ``--model.network.normalizer.help NAME`` shows a normalizer's options.
        per_head: per-head normalizer parameters.
        output_normalizer: the normalizer of the classifier output and its loss.
        qkv_bias: biases in the q/k/v projections (DeiT and timm: on; the official MultiMax
            ViT, the paper's ImageNet model: off).
        norm_eps: epsilon of every LayerNorm (DeiT: 1e-6; PyTorch's default is 1e-5).
        init: ``"deit"`` (the reference, see the module docstring) or ``"xavier"`` (mmkit's
            earlier rule: xavier-uniform Linear weights, zero biases; positions and class
            token as in ``"deit"``).
    """

    def __init__(
        self,
        preset: Preset = "tiny",
        *,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        pool: Literal["avg", "cls"] = "avg",
        normalizer: NormalizerSpec = "softmax",
        per_head: bool = False,
        output_normalizer: NormalizerSpec = "softmax",
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        init: Init = "deit",
    ) -> None:
        super().__init__()
        size = resolve_size("ViT", PRESETS, preset, embed_dim=embed_dim, depth=depth,
                            num_heads=num_heads, mlp_ratio=mlp_ratio)
        check_positive(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                       num_classes=num_classes, **size)
        check_rates(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        if img_size % patch_size:
            raise ValueError(f"img_size ({img_size}) must be divisible by patch_size "
                             f"({patch_size}); e.g. patch_size {_divisor_hint(img_size, patch_size)}")
        if pool not in ("avg", "cls"):
            raise ValueError(f"pool must be 'avg' or 'cls', got {pool!r}")
        if init not in ("deit", "xavier"):
            raise ValueError(f"init must be 'deit' or 'xavier', got {init!r}")
        if not norm_eps > 0:
            raise ValueError(f"norm_eps must be positive, got {norm_eps}")
        dim, depth = int(size["embed_dim"]), int(size["depth"])
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.pool, self.init = num_classes, pool, init
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + (pool == "cls"), dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(dim, int(size["num_heads"]), normalizer, mlp_ratio=float(size["mlp_ratio"]),
                  per_head=per_head, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                  drop_path=rate, norm_eps=norm_eps)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, num_classes)
        self.output_normalizer: Normalizer = make_normalizer(output_normalizer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise by ``self.init`` (normalizer parameters keep their own initialisation)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # bounds [-2, 2], as timm's
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                if self.init == "deit":
                    nn.init.trunc_normal_(module.weight, std=0.02)
                else:
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()  # weight 1, bias 0

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that take no weight decay (besides norms, biases and
        normalizer parameters, which the task finds itself)."""
        return {"pos_embed", "cls_token"}

    def _check_images(self, x: Tensor) -> None:
        expected = (self.in_chans, self.img_size, self.img_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"images of shape {tuple(x.shape)} do not fit this ViT, which expects "
                f"[B, {', '.join(map(str, expected))}]; set the model's img_size/in_chans or "
                "the data's img_size to match"
            )

    def forward_features(self, x: Tensor, need_weights: bool = False
                         ) -> tuple[Tensor, list[Tensor]]:
        """Pooled features ``[B, C]`` and, with ``need_weights``, per-layer attention."""
        self._check_images(x)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, h*w, C]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1+N, C]
        x = self.pos_drop(x + self.pos_embed)
        maps: list[Tensor] = []
        for block in self.blocks:
            if need_weights:
                x, probs = block(x, need_weights=True)
                maps.append(probs)
            else:
                x = block(x)
        x = self.norm(x)
        pooled = x[:, 0] if self.cls_token is not None else x.mean(dim=1)  # [B, C]
        return pooled, maps

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x)[0])

    def attention_maps(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and every layer's attention probabilities ``[B, H, N, N]``."""
        pooled, maps = self.forward_features(x, need_weights=True)
        return self.head(pooled), maps


def _divisor_hint(img_size: int, patch_size: int) -> str:
    divisors = [d for d in range(2, img_size + 1) if img_size % d == 0]
    return str(min(divisors, key=lambda d: abs(d - patch_size))) if divisors else "1"
