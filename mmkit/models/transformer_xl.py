"""A Transformer-XL language model (Dai et al. 2019) with a pluggable normalizer.

- **Segment-level recurrence.** Each layer also attends to ``mem_len`` cached
  hidden states of the previous segments (its own input there), without gradient.
- **Relative positions.** Sinusoidal encodings ``R`` of the query-key distance and
  the learned biases ``u`` and ``v``: ``score = (q + u)·k + (q + v)·W_r R_{i-j}``
  (:class:`~mmkit.nn.relative.RelativeAttention`). ``u``/``v`` are shared by all layers,
  as in the original (``untie_r=False``); ``untie_r=True`` gives each layer its own.
- **Training and evaluation lengths.** ``mem_len``, ``clamp_len`` and ``same_length`` hold
  in train mode; in eval mode (validation, test, generation) the ``eval_*`` values do,
  as the original's ``eval.py`` resets them (``None``: the training value). The segment
  length is the data module's (``tgt_len`` / ``eval_tgt_len``); the model takes any.
- **Initialisation** (``init="original"``): the original's ``weights_init``: weights,
  embeddings and ``u``/``v`` ``N(0, init_std)``, biases 0, LayerNorm weights
  ``N(1, init_std)``; adaptive projections ``N(0, 0.01)`` (their modules'
  ``reset_parameters(std, proj_std)``). ``init="xavier"`` is mmkit's earlier scheme:
  embeddings ``N(0, d_model^-1/2)``, xavier-uniform linear layers, zero ``u``/``v``.
- Post-norm blocks (the original) or pre-norm blocks; pre-norm adds a final LayerNorm
  before the head, which the original's ``pre_lnorm`` does not have (mmkit's option).
  Tied input/output embeddings; the ``output_normalizer`` is the paper's output-layer
  normalizer, whose loss trains it.
- **Adaptive input and softmax** (``cutoffs``, ``div_val``, ``tie_projs``; the original's
  ``--adaptive``): :mod:`mmkit.nn.adaptive`, with the output normalizer over the head and
  inside each cluster. ``forward`` then returns log-probabilities, training uses
  :meth:`head_loss` and evaluation :meth:`target_log_prob` (only the targets' clusters).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from ..nn.adaptive import AdaptiveHead, AdaptiveInput
from ..nn.lm_head import DEFAULT_CHUNK_SIZE, fused_linear_cross_entropy, supports_fused_head
from ..nn.relative import (
    FeedForward,
    RelativeAttention,
    init_transformer_xl,
    relative_positions,
    same_length_mask,
)
from ..normalizers import Normalizer, NormalizerSpec, make_normalizer
from .base import LanguageModelNetwork
from .search import continue_prompt
from .sizes import check_positive, check_rates, resolve_size

PRESETS: dict[str, dict[str, int]] = {
    "test": dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16, mem_len=16),
    "small": dict(n_layer=4, d_model=128, n_head=4, d_head=32, d_inner=512, tgt_len=64,
                  mem_len=64),  # trains on a CPU
    "base": dict(n_layer=16, d_model=410, n_head=10, d_head=41, d_inner=2100, tgt_len=150,
                 mem_len=150),  # WikiText-103 base
    "paper18": dict(n_layer=18, d_model=1024, n_head=16, d_head=64, d_inner=4096, tgt_len=384,
                    mem_len=384),  # WikiText-103 large; One Billion Words base with 8 heads of 128
}
Preset = Literal["test", "small", "base", "paper18"]
Mems = list[Tensor]
Init = Literal["original", "xavier"]
__all__ = ["PRESETS", "Lengths", "TransformerXL"]


class Lengths(NamedTuple):
    """The memory and position settings of one mode (train or eval)."""

    mem_len: int
    clamp_len: int
    same_length: bool


class TransformerXL(LanguageModelNetwork):
    """``forward(tokens [B, T], mems) -> (logits [B, T, V], new_mems)``.

    Args:
        vocab_size: number of token ids (the data module's tokenizer size).
        preset: named size (see :data:`PRESETS`); the sizes below override it.
        n_layer, d_model, n_head, d_head, d_inner: model size.
        tgt_len: the segment length :meth:`generate` reads a prompt in (the data module's
            ``tgt_len``/``eval_tgt_len`` cut the training and evaluation data).
        mem_len: cached hidden states per layer in train mode (0 disables the recurrence).
        clamp_len: distances above it share the position encoding of ``clamp_len``;
            ``<= 0`` (default, as the original's -1) turns clamping off.
        same_length: every query attends to the same number of keys, ``mem_len`` (itself
            and the ``mem_len - 1`` before it), as the original's ``--same_length``
            (default off, as the original's).
        eval_mem_len, eval_clamp_len, eval_same_length: the same settings in eval mode
            (validation, test, generation); ``None`` keeps the training value. The
            original evaluates WikiText-103 with 640, 400 and ``True`` (its ``eval.py``).
        dropout: dropout on embeddings, residual branches and the output.
        dropatt: dropout on attention probabilities.
        pre_norm: pre-norm blocks (post-norm, the original, by default); adds a final
            LayerNorm before the head, which the original's pre-norm does not have.
        untie_r: each layer has its own ``u``/``v`` (mmkit's earlier layout); by default
            one pair is shared by all layers, as in the original.
        init: ``original`` (the original's ``weights_init``, with ``init_std``) or
            ``xavier`` (mmkit's earlier scheme); see the module docstring.
        init_std: the standard deviation of the ``original`` init.
        tie_weights: share the input embedding with the output projection.
        normalizer: the attention normalizer: a registry name (softmax, sparsemax, entmax15, entmax,
            multimax, evsoftmax), a class path, or a dict such as ``{name: entmax, alpha: 1.3}``;
            ``--model.network.normalizer.help NAME`` shows a normalizer's options.
        per_head: per-head normalizer parameters.
        output_normalizer: the normalizer of the LM head and its loss.
        fused_head: train with the fused, chunked head + loss (:meth:`head_loss`), which
            never holds the ``[B·T, V]`` logits; same loss and gradients. Needs a SoftMax or
            shared MultiMax ``output_normalizer`` (otherwise the unfused loss is used).
        head_chunk_size: tokens per chunk of the fused head.
        cutoffs: the adaptive input and adaptive softmax (:mod:`mmkit.nn.adaptive`) with these
            cluster boundaries, as the original's ``--adaptive`` (WikiText-103: 20000, 40000,
            200000); ``None`` (default): a full embedding and output layer. With cutoffs,
            ``forward`` returns log-probabilities and the fused head does not apply.
        div_val: each adaptive cluster's vectors are ``div_val`` times smaller (1 for
            WikiText-103, 4 for One Billion Words in the original).
        tie_projs: share the adaptive projections between input and head (the original's
            ``tie_projs``): ``True`` ties every tail cluster's, the shortlist's staying separate
            (the original's WikiText-103 setting; its One Billion Words one ties none), a list
            sets each cluster, the shortlist first. At ``div_val`` 1 with ``d_model``-sized
            tables there are no projections, so nothing to tie.
    """

    def __init__(
        self,
        vocab_size: int,
        preset: Preset = "small",
        *,
        n_layer: int | None = None,
        d_model: int | None = None,
        n_head: int | None = None,
        d_head: int | None = None,
        d_inner: int | None = None,
        tgt_len: int | None = None,
        mem_len: int | None = None,
        clamp_len: int = -1,
        same_length: bool = False,
        eval_mem_len: int | None = None,
        eval_clamp_len: int | None = None,
        eval_same_length: bool | None = None,
        dropout: float = 0.1,
        dropatt: float = 0.0,
        pre_norm: bool = False,
        untie_r: bool = False,
        init: Init = "original",
        init_std: float = 0.02,
        tie_weights: bool = True,
        normalizer: NormalizerSpec = "softmax",
        per_head: bool = False,
        output_normalizer: NormalizerSpec = "softmax",
        fused_head: bool = False,
        head_chunk_size: int = DEFAULT_CHUNK_SIZE,
        cutoffs: list[int] | None = None,
        div_val: int = 1,
        tie_projs: bool | list[bool] = False,
    ) -> None:
        super().__init__()
        size = resolve_size("Transformer-XL", PRESETS, preset, n_layer=n_layer, d_model=d_model,
                            n_head=n_head, d_head=d_head, d_inner=d_inner, tgt_len=tgt_len,
                            mem_len=mem_len)
        check_positive(("mem_len",), vocab_size=vocab_size, head_chunk_size=head_chunk_size, **size)
        check_rates(dropout=dropout, dropatt=dropatt)
        self.vocab_size, self.d_model = vocab_size, size["d_model"]
        self.n_layer, self.tgt_len, self.mem_len = size["n_layer"], size["tgt_len"], size["mem_len"]
        self.pre_norm, self.untie_r, self.init, self.init_std = pre_norm, untie_r, init, init_std
        if init not in ("original", "xavier") or init_std <= 0:
            raise ValueError(f"init must be 'original' or 'xavier' and init_std > 0, got {init!r} "
                             f"and {init_std}")
        self.clamp_len, self.same_length = clamp_len, same_length
        self.train_lengths = Lengths(self.mem_len, clamp_len, same_length)
        self.eval_lengths = Lengths(
            self.mem_len if eval_mem_len is None else eval_mem_len,
            clamp_len if eval_clamp_len is None else eval_clamp_len,
            same_length if eval_same_length is None else eval_same_length)
        self.eval_mem_len, self.eval_clamp_len, self.eval_same_length = self.eval_lengths
        check_positive(("eval_mem_len",), eval_mem_len=self.eval_mem_len)
        for mode, lengths in (("", self.train_lengths), ("eval_", self.eval_lengths)):
            if lengths.same_length and lengths.mem_len < 1:
                raise ValueError(f"{mode}same_length needs {mode}mem_len >= 1 (each query sees the last "
                                 f"mem_len keys), got {lengths.mem_len}")
        self.adaptive = cutoffs is not None
        if not self.adaptive and (div_val != 1 or tie_projs):
            raise ValueError("div_val and tie_projs configure the adaptive softmax: set cutoffs too "
                             "(e.g. [20000, 40000, 200000]), or leave them at 1 and false")
        self.embed = (AdaptiveInput(vocab_size, self.d_model, cutoffs, div_val, scale=False) if self.adaptive
                      else nn.Embedding(vocab_size, self.d_model))  # scaled by √d_model in forward_hidden
        self.drop = nn.Dropout(dropout)
        self.attn = nn.ModuleList(
            RelativeAttention(self.d_model, size["n_head"], size["d_head"], normalizer, per_head,
                              dropout, dropatt, pre_norm, own_biases=untie_r) for _ in range(self.n_layer))
        shared = None if untie_r else (size["n_head"], size["d_head"])
        self.u = None if shared is None else nn.Parameter(torch.zeros(shared))  # content bias
        self.v = None if shared is None else nn.Parameter(torch.zeros(shared))  # position bias
        self.ff = nn.ModuleList(FeedForward(self.d_model, size["d_inner"], dropout, pre_norm)
                                for _ in range(self.n_layer))
        self.final_norm = nn.LayerNorm(self.d_model) if pre_norm else nn.Identity()
        if self.adaptive:
            self.head = AdaptiveHead(vocab_size, self.d_model, cutoffs, div_val)
            n = self.head.n_clusters
            self.head.tie_(self.embed, tie_weights,
                           [False] + [tie_projs] * n if isinstance(tie_projs, bool) else tie_projs)
        else:
            self.head = nn.Linear(self.d_model, vocab_size)
            if tie_weights:
                self.head.weight = self.embed.weight
        self.output_normalizer: Normalizer = make_normalizer(output_normalizer)
        self.fused_head, self.head_chunk_size = fused_head, head_chunk_size
        if fused_head and self.adaptive:
            warnings.warn("fused_head does not apply to the adaptive softmax (cutoffs); it trains with "
                          "the adaptive loss", stacklevel=2)
        elif fused_head and not supports_fused_head(self.output_normalizer):
            warnings.warn(f"fused_head needs a SoftMax or shared MultiMax output normalizer; "
                          f"{type(self.output_normalizer).__name__} trains with the unfused loss",
                          stacklevel=2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every parameter but the normalizers' with the ``init`` scheme
        (:func:`~mmkit.nn.relative.init_transformer_xl`)."""
        std = self.init_std if self.init == "original" else self.d_model ** -0.5  # the embeddings' std
        init_transformer_xl(self, self.init, std, self.head, self.embed, self.position_biases())

    def position_biases(self) -> list[nn.Parameter]:
        """The ``u``/``v`` parameters: one shared pair, or one pair per layer (``untie_r``)."""
        if self.u is not None:
            return [self.u, self.v]
        return [p for attn in self.attn for p in (attn.u, attn.v)]

    def no_weight_decay(self) -> set[str]:
        return {"u", "v"}

    def forward(self, tokens: Tensor, mems: Mems | None = None) -> tuple[Tensor, Mems]:
        """``(scores [B, T, V], new_mems)``: the logits, or with ``cutoffs`` the adaptive
        softmax's log-probabilities (:meth:`log_probs`)."""
        hidden, new_mems = self.forward_hidden(tokens, mems)
        return self._scores(hidden), new_mems  # [B, T, V]

    def _scores(self, hidden: Tensor) -> Tensor:
        return self.head(hidden, self.output_normalizer) if self.adaptive else self.head(hidden)

    def log_probs(self, hidden: Tensor) -> Tensor:
        """``log p(w)`` over the vocabulary ``[B, T, V]`` (fp32 at least) under the output
        normalizer (``-inf`` where a sparse one gives 0); adaptive: see :mod:`mmkit.nn.adaptive`."""
        if self.adaptive:
            return self.head.log_probs(hidden, self.output_normalizer)
        return self.output_normalizer.log_probs(self.head(hidden))

    def target_log_prob(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """``log p(target)`` ``[B, T]``; the adaptive head computes only the targets' clusters."""
        if self.adaptive:
            return self.head.target_log_prob(hidden, targets, self.output_normalizer)
        return self.log_probs(hidden).gather(-1, targets[..., None])[..., 0]

    @property
    def uses_fused_head(self) -> bool:
        """``True`` when :meth:`head_loss` is the fused head (``fused_head``, a supported
        output normalizer and no adaptive softmax)."""
        return self.fused_head and not self.adaptive and supports_fused_head(self.output_normalizer)

    def head_loss(self, hidden: Tensor, targets: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
        """The output normalizer's mean loss of ``hidden`` ``[B, T, C]`` (from
        :meth:`forward_hidden`) against ``targets`` ``[B, T]``; the adaptive loss with
        ``cutoffs`` (:meth:`mmkit.nn.AdaptiveHead.loss`), fused and chunked when
        :attr:`uses_fused_head`, else through the full logits."""
        if self.adaptive:
            return self.head.loss(hidden, targets, self.output_normalizer, label_smoothing=label_smoothing)
        if not self.uses_fused_head:
            return self.output_normalizer.loss(self.head(hidden), targets, label_smoothing=label_smoothing)
        return fused_linear_cross_entropy(hidden, self.head.weight, self.head.bias, targets,
                                          self.output_normalizer, chunk_size=self.head_chunk_size,
                                          label_smoothing=label_smoothing)

    def forward_hidden(self, tokens: Tensor, mems: Mems | None = None) -> tuple[Tensor, Mems]:
        """``(hidden [B, T, C], new_mems)``: the states the head reads (after the final
        norm and dropout), so ``forward`` is ``head(hidden)``."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T] ids, got shape {tuple(tokens.shape)}")
        if mems is not None and len(mems) != self.n_layer:
            raise ValueError(f"expected {self.n_layer} memories, got {len(mems)}")
        b, t = tokens.shape
        lengths = self.lengths()
        h = self.drop(self.embed(tokens) * math.sqrt(self.d_model))  # [B, T, C]
        m_len = 0 if mems is None else mems[0].shape[1]
        pos = relative_positions(m_len + t, self.d_model, lengths.clamp_len, tokens.device)
        pos = self.drop(pos.to(h.dtype))  # [K, C]: row d encodes distance min(d, clamp_len)
        keep = same_length_mask(t, m_len + t, lengths.mem_len, tokens.device) if lengths.same_length else None
        hidden = []
        for i, (attn, ff) in enumerate(zip(self.attn, self.ff)):
            hidden.append(h)
            h = ff(attn(h, None if mems is None else mems[i], pos, self.u, self.v, keep))
        return self.drop(self.final_norm(h)), self._update(mems, hidden, lengths.mem_len)  # [B, T, C]

    def lengths(self, training: bool | None = None) -> Lengths:
        """``(mem_len, clamp_len, same_length)`` of train mode or of eval mode (by default
        the module's current mode)."""
        return self.train_lengths if (self.training if training is None else training) else self.eval_lengths

    @torch.no_grad()
    def _update(self, mems: Mems | None, hidden: list[Tensor], mem_len: int) -> Mems:
        """Each layer's new memory: the last ``mem_len`` of ``[old memory; its input]``."""
        if mem_len == 0:
            return [h.new_zeros(h.shape[0], 0, h.shape[2]) for h in hidden]
        if mems is None:
            return [h[:, -mem_len:].detach() for h in hidden]
        return [torch.cat([m, h], 1)[:, -mem_len:].detach() for m, h in zip(mems, hidden)]

    def init_mems(self, batch_size: int, device: torch.device | None = None) -> Mems:
        return [torch.zeros(batch_size, 0, self.d_model, device=device) for _ in range(self.n_layer)]

    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, greedy: bool = False, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """Continue ``prompt`` ``[B, T0]`` by ``max_new_tokens`` tokens.

        With ``use_cache`` the prompt is read in ``tgt_len`` segments and each new token
        is one step with the cached memory (attention span: ``mem_len`` + segment);
        without it every step re-reads the whole sequence (span: everything). The two
        agree while the sequence fits in ``mem_len + 1`` (always with ``same_length``).
        The lengths are those of the module's mode (``eval_*`` in eval mode). Sampling draws from the
        output normalizer's distribution of ``logits / temperature`` restricted to
        the ``top_k`` largest; with ``cutoffs``, from ``p^(1/temperature)`` renormalized over
        the ``top_k`` most likely tokens.
        """
        return continue_prompt(self, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                               greedy=greedy, use_cache=use_cache, generator=generator)
