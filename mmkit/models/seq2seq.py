"""An encoder-decoder Transformer for translation (fairseq's post-norm layout by default).

Where the attention normalizer runs is set by ``placement``:

- ``"official"``: as in the official MultiMax fairseq code. The configured normalizer runs
  in encoder self-attention and in decoder self-attention while decoding a whole target at
  once (training, teacher-forced validation loss); cross-attention always uses (plain)
  softmax, and so does decoder self-attention in incremental (key/value-cached) decoding,
  i.e. during generation. Cached decoding therefore equals full decoding only for plain
  softmax. ``predict``/``test`` decode with the placement the model was built with (an
  init argument, so checkpoints record it).
- ``"everywhere"`` (mmkit's extension): the configured normalizer in every attention, in
  full and in cached decoding alike, so cached decoding equals full decoding.

The output layer always uses ``output_normalizer``. Positions are sinusoidal (``positions``:
fairseq's or mmkit's convention, :mod:`mmkit.nn.positions`). One embedding serves the
target and the output projection (fairseq's ``--share-decoder-input-output-embed``); the
source shares it too unless ``share_all_embeddings=False`` gives the encoder its own.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ..nn import KVCache, MultiHeadAttention
from ..nn.blocks import ACTIVATIONS, Mlp, Residual
from ..nn.positions import fairseq_sinusoid, sinusoid
from ..normalizers import Normalizer, NormalizerSpec, SoftMax, make_normalizer
from .base import TranslationNetwork
from .sizes import check_positive, check_rates, resolve_size

PRESETS: dict[str, dict[str, int]] = {
    "test": dict(d_model=32, ffn_dim=64, heads=2, encoder_layers=2, decoder_layers=2),
    "small": dict(d_model=128, ffn_dim=256, heads=4, encoder_layers=3, decoder_layers=3),
    # fairseq's transformer_iwslt_de_en (use dropout 0.3)
    "iwslt_de_en": dict(d_model=512, ffn_dim=1024, heads=4, encoder_layers=6, decoder_layers=6),
}
#: What ``activation``, ``positions`` and ``init`` mean when left at ``None``, per preset:
#: ``iwslt_de_en`` is fairseq's (ReLU, fairseq's sinusoid, fairseq's init); the others keep
#: mmkit's earlier choices (GELU, mmkit's sinusoid, PyTorch's default init).
PRESET_STYLE: dict[str, dict[str, str]] = {
    "test": dict(activation="gelu", positions="mmkit", init="torch"),
    "small": dict(activation="gelu", positions="mmkit", init="torch"),
    "iwslt_de_en": dict(activation="relu", positions="fairseq", init="fairseq"),
}
Preset = Literal["test", "small", "iwslt_de_en"]
Placement = Literal["official", "everywhere"]
Activation = Literal["relu", "gelu"]
Positions = Literal["fairseq", "mmkit"]
Init = Literal["fairseq", "torch"]
LayerCache = tuple[KVCache, KVCache]  # (self-attention, cross-attention)


class EncoderLayer(nn.Module):
    def __init__(self, d: int, ffn: int, heads: int, normalizer: NormalizerSpec, per_head: bool,
                 dropout: float, attn_dropout: float, pre_norm: bool, activation: str) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d, heads, normalizer, per_head=per_head, attn_drop=attn_dropout)
        self.mlp = Mlp(d, ffn, 0.0, activation)  # fairseq's activation dropout: 0
        self.sub1, self.sub2 = Residual(d, dropout, pre_norm), Residual(d, dropout, pre_norm)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = self.sub1(x, lambda h: self.attn(h, mask=mask))
        return self.sub2(x, self.mlp)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention, FFN. Under ``placement="official"`` the
    cross-attention is softmax and cached (incremental) self-attention calls softmax."""

    def __init__(self, d: int, ffn: int, heads: int, normalizer: NormalizerSpec, per_head: bool,
                 dropout: float, attn_dropout: float, pre_norm: bool, activation: str,
                 placement: str) -> None:
        super().__init__()
        official = placement == "official"
        self.self_attn = MultiHeadAttention(d, heads, normalizer, per_head=per_head,
                                            attn_drop=attn_dropout)
        self.cross_attn = MultiHeadAttention(d, heads, "softmax" if official else normalizer,
                                             per_head=per_head and not official, attn_drop=attn_dropout)
        self.mlp = Mlp(d, ffn, 0.0, activation)  # fairseq's activation dropout: 0
        self.subs = nn.ModuleList(Residual(d, dropout, pre_norm) for _ in range(3))
        # Not a submodule (nothing to save): the per-call normalizer of cached self-attention.
        self._cached_normalizer: tuple[Normalizer, ...] = (SoftMax(),) if official else ()

    def forward(self, y: Tensor, memory: Tensor, src_mask: Tensor,
                cache: LayerCache | None = None) -> Tensor:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        override = self._cached_normalizer[0] if cache is not None and self._cached_normalizer else None
        y = self.subs[0](y, lambda h: self.self_attn(h, causal=True, cache=self_cache, normalizer=override))
        y = self.subs[1](y, lambda h: self.cross_attn(h, memory, mask=src_mask, cache=cross_cache))
        return self.subs[2](y, self.mlp)


def fairseq_init_(attn: MultiHeadAttention) -> None:
    """fairseq's ``MultiheadAttention.reset_parameters``: q, k and v weights xavier-uniform
    with gain 1/√2 (each d×d block on its own), the output projection xavier-uniform with a
    zero bias; the q/k/v biases keep PyTorch's default."""
    gain = 2 ** -0.5
    with torch.no_grad():
        nn.init.xavier_uniform_(attn.q.weight, gain=gain)
        for block in attn.kv.weight.chunk(2, dim=0):  # k rows, then v rows: [d, d] each
            nn.init.xavier_uniform_(block, gain=gain)
        nn.init.xavier_uniform_(attn.proj.weight)
        nn.init.zeros_(attn.proj.bias)


class Seq2SeqTransformer(TranslationNetwork):
    """``forward(src [B, S], tgt_in [B, T]) -> logits [B, T, V]``.

    Args:
        vocab_size: size of the target vocabulary (also the source's when the embeddings
            are shared).
        preset: named size (see :data:`PRESETS`); the sizes below override it.
        d_model, ffn_dim, heads, encoder_layers, decoder_layers: model size.
        dropout, attn_dropout: residual and attention-probability dropout.
        pre_norm: pre-norm sublayers (post-norm, fairseq's default, otherwise).
        pad_id, bos_id, eos_id: special token ids of the tokenizer.
        normalizer: the attention normalizer: a registry name (softmax, sparsemax, entmax15, entmax,
            multimax, evsoftmax), a class path, or a dict such as ``{name: entmax, alpha: 1.3}``;
            ``--model.network.normalizer.help NAME`` shows a normalizer's options.
        placement: which attentions use ``normalizer`` (see the module docstring):
            ``"official"`` (the MultiMax reference) or ``"everywhere"`` (mmkit's extension,
            the default, so that models trained before this option decode as trained).
        per_head: per-head normalizer parameters.
        output_normalizer: the output layer's normalizer and loss.
        activation: the FFN's activation; ``None`` = the preset's (:data:`PRESET_STYLE`:
            ReLU for ``iwslt_de_en`` as in fairseq, GELU otherwise).
        positions: ``"fairseq"`` (frequencies ``10000^(-i/(d/2-1))``, positions from
            ``pad_id + 1``, zero at padding) or ``"mmkit"`` (``10000^(-2i/d)``, from 0);
            ``None`` = the preset's.
        init: ``"fairseq"`` (fairseq's attention init, see :func:`fairseq_init_`) or
            ``"torch"`` (PyTorch's defaults); embeddings are N(0, d^-½) either way;
            ``None`` = the preset's.
        share_all_embeddings: one embedding for source, target and output (a joint
            vocabulary); ``False`` gives the encoder its own, as fairseq's IWSLT'14 model has.
        src_vocab_size: size of the source embedding when it is not shared (default
            ``vocab_size``).
    """

    def __init__(self, vocab_size: int, preset: Preset = "small", *, d_model: int | None = None,
                 ffn_dim: int | None = None, heads: int | None = None,
                 encoder_layers: int | None = None, decoder_layers: int | None = None,
                 dropout: float = 0.1, attn_dropout: float = 0.0, pre_norm: bool = False,
                 pad_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                 normalizer: NormalizerSpec = "softmax", placement: Placement = "everywhere",
                 per_head: bool = False, output_normalizer: NormalizerSpec = "softmax",
                 activation: Activation | None = None, positions: Positions | None = None,
                 init: Init | None = None, share_all_embeddings: bool = True,
                 src_vocab_size: int | None = None) -> None:
        super().__init__()
        size = resolve_size("seq2seq", PRESETS, preset, d_model=d_model, ffn_dim=ffn_dim, heads=heads,
                            encoder_layers=encoder_layers, decoder_layers=decoder_layers)
        check_positive(vocab_size=vocab_size, **size)
        check_rates(dropout=dropout, attn_dropout=attn_dropout)
        style = {**PRESET_STYLE[preset], **{k: v for k, v in dict(
            activation=activation, positions=positions, init=init).items() if v is not None}}
        for key, allowed in (("placement", ("official", "everywhere")), ("activation", ACTIVATIONS),
                             ("positions", ("fairseq", "mmkit")), ("init", ("fairseq", "torch"))):
            value = placement if key == "placement" else style[key]
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        if src_vocab_size is not None and share_all_embeddings:
            raise ValueError("src_vocab_size needs share_all_embeddings=False (a shared embedding "
                             "has the target's vocab_size)")
        d = size["d_model"]
        self.vocab_size, self.d_model, self.placement = vocab_size, d, placement
        self.activation, self.positions = style["activation"], style["positions"]
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.embed = nn.Embedding(vocab_size, d, padding_idx=pad_id)
        self.src_embed = None if share_all_embeddings else nn.Embedding(
            src_vocab_size or vocab_size, d, padding_idx=pad_id)
        self.drop = nn.Dropout(dropout)
        args = (d, size["ffn_dim"], size["heads"], normalizer, per_head, dropout, attn_dropout, pre_norm,
                self.activation)
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(size["encoder_layers"]))
        self.decoder = nn.ModuleList(DecoderLayer(*args, placement) for _ in range(size["decoder_layers"]))
        self.enc_norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.output_normalizer: Normalizer = make_normalizer(output_normalizer)
        for embed in (self.embed, self.src_embed):
            if embed is not None:
                nn.init.normal_(embed.weight, std=d ** -0.5)
                with torch.no_grad():
                    embed.weight[pad_id].zero_()
        if style["init"] == "fairseq":
            for module in self.modules():
                if isinstance(module, MultiHeadAttention):
                    fairseq_init_(module)

    def _embed(self, tokens: Tensor, embed: nn.Embedding, start: int = 0) -> Tensor:
        steps = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        if self.positions == "fairseq":  # from pad_id + 1; padding tokens get zeros
            pos = fairseq_sinusoid(steps + self.pad_id + 1, self.d_model)  # [T, C]
            pos = pos.to(embed.weight.dtype) * (tokens != self.pad_id)[..., None]  # [B, T, C]
        else:
            pos = sinusoid(steps, self.d_model).to(embed.weight.dtype)
        return self.drop(embed(tokens) * math.sqrt(self.d_model) + pos)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output ``[B, S, C]`` and the source keep-mask ``[B, 1, 1, S]``."""
        if src.ndim != 2:
            raise ValueError(f"src must be [B, S] token ids, got shape {tuple(src.shape)}")
        mask = (src != self.pad_id)[:, None, None, :]
        x = self._embed(src, self.embed if self.src_embed is None else self.src_embed)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor,
               caches: list[LayerCache] | None = None, start: int = 0) -> Tensor:
        """Logits ``[B, T, V]`` for ``tgt_in`` (positions from ``start`` when cached)."""
        y = self._embed(tgt_in, self.embed, start)
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
        return self.output_normalizer.log_probs(logits.float())

    def no_weight_decay(self) -> set[str]:
        return set()


__all__ = ["Seq2SeqTransformer", "PRESETS", "PRESET_STYLE"]
