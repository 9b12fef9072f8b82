"""A Transformer-XL language model (Dai et al. 2019) with a pluggable normalizer.

- **Segment-level recurrence.** Each layer also attends to ``mem_len`` cached
  hidden states of the previous segments (its own input there), without gradient.
- **Relative positions.** Sinusoidal encodings ``R`` of the query-key distance and
  the learned biases ``u`` and ``v``: ``score = (q + u)·k + (q + v)·W_r R_{i-j}``. The
  position term is gathered by distance (no relative-shift trick) and enters the
  shared :func:`~mmkit.nn.attend` as ``bias``; the causal mask over memory plus
  segment is applied inside the normalizer.
- Post-norm (the original) or pre-norm blocks; tied input/output embeddings; the
  ``output_normalizer`` is the paper's output-layer normalizer, whose loss trains it.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor, nn

from ..nn import attend
from ..nn.attention import build_attention_normalizer
from ..nn.lm_head import DEFAULT_CHUNK_SIZE, fused_linear_cross_entropy, supports_fused_head
from ..normalizers import Normalizer, NormalizerSpec, make_normalizer
from .sizes import check_positive, check_rates, resolve_size

PRESETS: dict[str, dict[str, int]] = {
    "test": dict(n_layer=2, d_model=32, n_head=2, d_head=16, d_inner=64, tgt_len=16, mem_len=16),
    "small": dict(n_layer=4, d_model=128, n_head=4, d_head=32, d_inner=512, tgt_len=64,
                  mem_len=64),  # trains on a CPU
    "base": dict(n_layer=16, d_model=410, n_head=10, d_head=41, d_inner=2100, tgt_len=150,
                 mem_len=150),  # WikiText-103 base
    "paper18": dict(n_layer=18, d_model=1024, n_head=16, d_head=64, d_inner=4096, tgt_len=384,
                    mem_len=384),  # WikiText-103 large: the paper's efficiency table
}
Preset = Literal["test", "small", "base", "paper18"]
Mems = list[Tensor]


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """``[K, dim]`` sinusoidal encodings of ``positions`` ``[K]`` (sin half, cos half)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=positions.device) / dim))
    angles = positions.float()[:, None] * inv_freq[None, :]  # [K, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RelativeAttention(nn.Module):
    """Multi-head attention over ``[memory; segment]`` with relative positions."""

    def __init__(self, d_model: int, n_head: int, d_head: int, normalizer: NormalizerSpec,
                 per_head: bool, dropout: float, dropatt: float, pre_norm: bool) -> None:
        super().__init__()
        self.n_head, self.d_head, self.dropatt, self.pre_norm = n_head, d_head, dropatt, pre_norm
        self.q = nn.Linear(d_model, n_head * d_head, bias=False)
        self.kv = nn.Linear(d_model, 2 * n_head * d_head, bias=False)
        self.r = nn.Linear(d_model, n_head * d_head, bias=False)
        self.u = nn.Parameter(torch.zeros(n_head, d_head))  # content bias
        self.v = nn.Parameter(torch.zeros(n_head, d_head))  # position bias
        self.out = nn.Linear(n_head * d_head, d_model, bias=False)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.normalizer = build_attention_normalizer(normalizer, n_head if per_head else None)

    def forward(self, h: Tensor, mem: Tensor | None, pos: Tensor) -> Tensor:
        """``h`` ``[B, T, C]``, ``mem`` ``[B, M, C]``, ``pos`` ``[M+T, C]`` for distances
        ``0 .. M+T-1``; returns the block output ``[B, T, C]``."""
        b, t, _ = h.shape
        context = h if mem is None else torch.cat([mem, h], dim=1)  # [B, K, C]
        if self.pre_norm:
            context = self.norm(context)
        k_len, m_len = context.shape[1], context.shape[1] - t
        query_in = context[:, m_len:]
        q = self.q(query_in).view(b, t, self.n_head, self.d_head).transpose(1, 2)  # [B, H, T, Dh]
        k, v = self.kv(context).view(b, k_len, 2 * self.n_head, self.d_head).transpose(1, 2).chunk(2, 1)
        r = self.r(pos).view(k_len, self.n_head, self.d_head).permute(1, 2, 0)  # [H, Dh, K]
        scale = self.d_head ** -0.5
        by_distance = (q + self.v[:, None]) @ r  # [B, H, T, K]: column d = distance d
        distance = (m_len + torch.arange(t, device=h.device)[:, None]
                    - torch.arange(k_len, device=h.device)[None, :]).clamp_min(0)  # [T, K]
        bias = by_distance.gather(-1, distance.expand(b, self.n_head, t, k_len)) * scale
        out = attend(q + self.u[:, None], k, v, self.normalizer, causal=True, bias=bias,
                     dropout_p=self.dropatt if self.training else 0.0, scale=scale)
        out = self.drop(self.out(out.transpose(1, 2).reshape(b, t, -1)))  # [B, T, C]
        return h + out if self.pre_norm else self.norm(h + out)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_inner: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.net = nn.Sequential(nn.Linear(d_model, d_inner), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(d_inner, d_model), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, h: Tensor) -> Tensor:
        if self.pre_norm:
            return h + self.net(self.norm(h))
        return self.norm(h + self.net(h))


class TransformerXL(nn.Module):
    """``forward(tokens [B, T], mems) -> (logits [B, T, V], new_mems)``.

    Args:
        vocab_size: number of token ids (the data module's tokenizer size).
        preset: named size (see :data:`PRESETS`); the sizes below override it.
        n_layer, d_model, n_head, d_head, d_inner: model size.
        tgt_len: segment length the data is cut into (used by the task and configs).
        mem_len: cached hidden states per layer (0 disables the recurrence).
        dropout: dropout on embeddings, residual branches and the output.
        dropatt: dropout on attention probabilities.
        pre_norm: pre-norm blocks (post-norm, the original, by default).
        tie_weights: share the input embedding with the output projection.
        normalizer: the attention normalizer (name, class path or dict).
        per_head: per-head normalizer parameters.
        output_normalizer: the normalizer of the LM head and its loss.
        fused_head: train with the fused, chunked head + loss (:meth:`head_loss`), which
            never holds the ``[B·T, V]`` logits; same loss and gradients. Needs a SoftMax or
            shared MultiMax ``output_normalizer`` (otherwise the unfused loss is used).
        head_chunk_size: tokens per chunk of the fused head.
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
        dropout: float = 0.1,
        dropatt: float = 0.0,
        pre_norm: bool = False,
        tie_weights: bool = True,
        normalizer: NormalizerSpec = "softmax",
        per_head: bool = False,
        output_normalizer: NormalizerSpec = "softmax",
        fused_head: bool = False,
        head_chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()
        size = resolve_size("Transformer-XL", PRESETS, preset, n_layer=n_layer, d_model=d_model,
                            n_head=n_head, d_head=d_head, d_inner=d_inner, tgt_len=tgt_len,
                            mem_len=mem_len)
        check_positive(("mem_len",), vocab_size=vocab_size, head_chunk_size=head_chunk_size, **size)
        check_rates(dropout=dropout, dropatt=dropatt)
        self.vocab_size, self.d_model = vocab_size, size["d_model"]
        self.n_layer, self.tgt_len, self.mem_len = size["n_layer"], size["tgt_len"], size["mem_len"]
        self.pre_norm = pre_norm
        self.embed = nn.Embedding(vocab_size, self.d_model)
        self.drop = nn.Dropout(dropout)
        self.attn = nn.ModuleList(
            RelativeAttention(self.d_model, size["n_head"], size["d_head"], normalizer, per_head,
                              dropout, dropatt, pre_norm) for _ in range(self.n_layer))
        self.ff = nn.ModuleList(FeedForward(self.d_model, size["d_inner"], dropout, pre_norm)
                                for _ in range(self.n_layer))
        self.final_norm = nn.LayerNorm(self.d_model) if pre_norm else nn.Identity()
        self.head = nn.Linear(self.d_model, vocab_size)
        if tie_weights:
            self.head.weight = self.embed.weight
        self.output_normalizer: Normalizer = make_normalizer(output_normalizer)
        self.fused_head, self.head_chunk_size = fused_head, head_chunk_size
        if fused_head and not supports_fused_head(self.output_normalizer):
            warnings.warn(f"fused_head needs a SoftMax or shared MultiMax output normalizer; "
                          f"{type(self.output_normalizer).__name__} trains with the unfused loss",
                          stacklevel=2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=self.d_model ** -0.5)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.head:
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return {"u", "v"}

    def forward(self, tokens: Tensor, mems: Mems | None = None) -> tuple[Tensor, Mems]:
        hidden, new_mems = self.forward_hidden(tokens, mems)
        return self.head(hidden), new_mems  # [B, T, V]

    @property
    def uses_fused_head(self) -> bool:
        """``True`` when :meth:`head_loss` is the fused head (``fused_head`` and a supported
        output normalizer)."""
        return self.fused_head and supports_fused_head(self.output_normalizer)

    def head_loss(self, hidden: Tensor, targets: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
        """The output normalizer's mean loss of ``hidden`` ``[B, T, C]`` (from
        :meth:`forward_hidden`) against ``targets`` ``[B, T]``; fused and chunked when
        :attr:`uses_fused_head`, else through the full logits."""
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
        h = self.drop(self.embed(tokens) * math.sqrt(self.d_model))  # [B, T, C]
        m_len = 0 if mems is None else mems[0].shape[1]
        distances = torch.arange(m_len + t, device=tokens.device)  # 0 .. K-1
        pos = self.drop(sinusoid(distances, self.d_model).to(h.dtype))  # [K, C]
        hidden = []
        for i, (attn, ff) in enumerate(zip(self.attn, self.ff)):
            hidden.append(h)
            h = ff(attn(h, None if mems is None else mems[i], pos))
        return self.drop(self.final_norm(h)), self._update(mems, hidden)  # [B, T, C]

    @torch.no_grad()
    def _update(self, mems: Mems | None, hidden: list[Tensor]) -> Mems:
        """Each layer's new memory: the last ``mem_len`` of ``[old memory; its input]``."""
        if self.mem_len == 0:
            return [h.new_zeros(h.shape[0], 0, h.shape[2]) for h in hidden]
        if mems is None:
            return [h[:, -self.mem_len:].detach() for h in hidden]
        return [torch.cat([m, h], 1)[:, -self.mem_len:].detach() for m, h in zip(mems, hidden)]

    def init_mems(self, batch_size: int, device: torch.device | None = None) -> Mems:
        return [torch.zeros(batch_size, 0, self.d_model, device=device) for _ in range(self.n_layer)]

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, greedy: bool = False, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """Continue ``prompt`` ``[B, T0]`` by ``max_new_tokens`` tokens.

        With ``use_cache`` the prompt is read in ``tgt_len`` segments and each new token
        is one step with the cached memory (attention span: ``mem_len`` + segment);
        without it every step re-reads the whole sequence (span: everything). The two
        agree while the sequence fits in ``mem_len + 1``. Sampling draws from the
        output normalizer's distribution of ``logits / temperature`` restricted to
        the ``top_k`` largest.
        """
        if prompt.ndim != 2 or prompt.shape[1] == 0:
            raise ValueError(f"prompt must be [B, T0] with T0 >= 1, got {tuple(prompt.shape)}")
        if temperature <= 0 or (top_k is not None and top_k < 1) or max_new_tokens < 0:
            raise ValueError("temperature must be > 0, top_k >= 1 and max_new_tokens >= 0")
        tokens, mems, last = prompt, None, None
        if use_cache:
            for start in range(0, prompt.shape[1], self.tgt_len):
                logits, mems = self(prompt[:, start:start + self.tgt_len], mems)
            last = logits[:, -1]
        for step in range(max_new_tokens):
            if not use_cache:
                last = self(tokens)[0][:, -1]
            nxt = self._pick(last, temperature, top_k, greedy, generator)  # [B, 1]
            tokens = torch.cat([tokens, nxt], dim=1)
            if use_cache and step + 1 < max_new_tokens:
                logits, mems = self(nxt, mems)
                last = logits[:, -1]
        return tokens

    def _pick(self, logits: Tensor, temperature: float, top_k: int | None, greedy: bool,
              generator: torch.Generator | None) -> Tensor:
        ranking = (self.output_normalizer.modulate(logits) if self.output_normalizer.is_modulated_softmax
                   else logits)
        if greedy:
            return ranking.argmax(-1, keepdim=True)
        scores = logits.float() / temperature
        if top_k is not None and top_k < scores.shape[-1]:
            kth = scores.topk(top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = self.output_normalizer(scores, dim=-1).float()
        return torch.multinomial(probs, 1, generator=generator)
