"""An encoder-decoder Transformer for translation with one normalizer everywhere.

The chosen normalizer runs in encoder self-attention, decoder causal
self-attention, cross-attention and at the output layer, in full and in
incremental (key/value-cached) decoding alike. (The official MultiMax fairseq
code falls back to softmax for cross-attention and cached decoding; this does not.)
Sinusoidal positions; one embedding shared by the source, the target and the
output projection (joint vocabulary).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..nn import KVCache, Mlp, MultiHeadAttention
from ..normalizers import Normalizer, NormalizerSpec, make_normalizer
from .sizes import check_positive, check_rates, resolve_size
from .transformer_xl import sinusoid

PRESETS: dict[str, dict[str, int]] = {
    "test": dict(d_model=32, ffn_dim=64, heads=2, encoder_layers=2, decoder_layers=2),
    "small": dict(d_model=128, ffn_dim=256, heads=4, encoder_layers=3, decoder_layers=3),
    # fairseq's transformer_iwslt_de_en (use dropout 0.3)
    "iwslt_de_en": dict(d_model=512, ffn_dim=1024, heads=4, encoder_layers=6, decoder_layers=6),
}
Preset = Literal["test", "small", "iwslt_de_en"]
LayerCache = tuple[KVCache, KVCache]  # (self-attention, cross-attention)


class _Sublayer(nn.Module):
    """Residual + LayerNorm around one sublayer, post-norm (fairseq's default) or pre-norm."""

    def __init__(self, dim: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm, self.drop, self.pre_norm = nn.LayerNorm(dim), nn.Dropout(dropout), pre_norm

    def forward(self, x: Tensor, fn) -> Tensor:
        if self.pre_norm:
            return x + self.drop(fn(self.norm(x)))
        return self.norm(x + self.drop(fn(x)))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, ffn: int, heads: int, normalizer: NormalizerSpec, per_head: bool,
                 dropout: float, attn_dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d, heads, normalizer, per_head=per_head, attn_drop=attn_dropout)
        self.mlp = Mlp(d, ffn, 0.0)
        self.sub1, self.sub2 = _Sublayer(d, dropout, pre_norm), _Sublayer(d, dropout, pre_norm)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.sub1(x, lambda h: self.attn(h, mask=mask))
        return self.sub2(x, self.mlp)


class DecoderLayer(nn.Module):
    def __init__(self, d: int, ffn: int, heads: int, normalizer: NormalizerSpec, per_head: bool,
                 dropout: float, attn_dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d, heads, normalizer, per_head=per_head,
                                            attn_drop=attn_dropout)
        self.cross_attn = MultiHeadAttention(d, heads, normalizer, per_head=per_head,
                                             attn_drop=attn_dropout)
        self.mlp = Mlp(d, ffn, 0.0)
        self.subs = nn.ModuleList(_Sublayer(d, dropout, pre_norm) for _ in range(3))

    def forward(self, y: Tensor, memory: Tensor, src_mask: Tensor,
                cache: LayerCache | None = None) -> Tensor:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        y = self.subs[0](y, lambda h: self.self_attn(h, causal=True, cache=self_cache))
        y = self.subs[1](y, lambda h: self.cross_attn(h, memory, mask=src_mask, cache=cross_cache))
        return self.subs[2](y, self.mlp)


class Seq2SeqTransformer(nn.Module):
    """``forward(src [B, S], tgt_in [B, T]) -> logits [B, T, V]``.

    Args:
        vocab_size: size of the joint vocabulary.
        preset: named size (see :data:`PRESETS`); the sizes below override it.
        d_model, ffn_dim, heads, encoder_layers, decoder_layers: model size.
        dropout, attn_dropout: residual and attention-probability dropout.
        pre_norm: pre-norm sublayers (post-norm, fairseq's default, otherwise).
        pad_id, bos_id, eos_id: special token ids of the tokenizer.
        normalizer: the normalizer of every attention layer (name, class path or dict).
        per_head: per-head normalizer parameters.
        output_normalizer: the output layer's normalizer and loss.
    """

    def __init__(self, vocab_size: int, preset: Preset = "small", *, d_model: int | None = None,
                 ffn_dim: int | None = None, heads: int | None = None,
                 encoder_layers: int | None = None, decoder_layers: int | None = None,
                 dropout: float = 0.1, attn_dropout: float = 0.0, pre_norm: bool = False,
                 pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 normalizer: NormalizerSpec = "softmax", per_head: bool = False,
                 output_normalizer: NormalizerSpec = "softmax") -> None:
        super().__init__()
        size = resolve_size("seq2seq", PRESETS, preset, d_model=d_model, ffn_dim=ffn_dim, heads=heads,
                            encoder_layers=encoder_layers, decoder_layers=decoder_layers)
        check_positive(vocab_size=vocab_size, **size)
        check_rates(dropout=dropout, attn_dropout=attn_dropout)
        d = size["d_model"]
        self.vocab_size, self.d_model = vocab_size, d
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.embed = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        self.drop = nn.Dropout(dropout)
        args = (d, size["ffn_dim"], size["heads"], normalizer, per_head, dropout, attn_dropout, pre_norm)
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(size["encoder_layers"]))
        self.decoder = nn.ModuleList(DecoderLayer(*args) for _ in range(size["decoder_layers"]))
        self.enc_norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.output_normalizer: Normalizer = make_normalizer(output_normalizer)
        nn.init.normal_(self.embed.weight, std=d ** -0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()

    def _embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        pos = sinusoid(torch.arange(start, start + tokens.shape[1], device=tokens.device), self.d_model)
        return self.drop(self.embed(tokens) * math.sqrt(self.d_model) + pos.to(self.embed.weight.dtype))

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output ``[B, S, C]`` and the source keep-mask ``[B, 1, 1, S]``."""
        if src.ndim != 2:
            raise ValueError(f"src must be [B, S] token ids, got shape {tuple(src.shape)}")
        mask = (src != self.pad_id)[:, None, None, :]
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor,
               caches: list[LayerCache] | None = None, start: int = 0) -> Tensor:
        """Logits ``[B, T, V]`` for ``tgt_in`` (positions from ``start`` when cached)."""
        y = self._embed(tgt_in, start)
        for i, layer in enumerate(self.decoder):
            y = layer(y, memory, src_mask, None if caches is None else caches[i])
        return self.dec_norm(y) @ self.embed.weight.T  # tied output projection

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    def new_caches(self) -> list[LayerCache]:
        return [(KVCache(), KVCache(static=True)) for _ in self.decoder]

    def log_probs(self, logits: Tensor) -> Tensor:
        """Log-probabilities of the output normalizer (``-inf`` where a sparse one gives 0)."""
        norm, logits = self.output_normalizer, logits.float()
        if norm.is_modulated_softmax:
            return torch.log_softmax(norm.modulate(logits), dim=-1)
        return torch.log(norm(logits, dim=-1))

    def no_weight_decay(self) -> set[str]:
        return set()


__all__ = ["Seq2SeqTransformer", "PRESETS"]
