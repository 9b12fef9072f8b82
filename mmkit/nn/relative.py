"""Transformer-XL's building blocks: relative-position attention over ``[memory; segment]``,
the position-wise feed-forward block and the ``same_length`` window (the sinusoid is
:func:`mmkit.nn.positions.sinusoid`).

- **Scores.** ``score(i, j) = (q_i + u)·k_j + (q_i + v)·W_r R_{d}`` with ``d`` the
  query-key distance, gathered by distance (no relative-shift trick) and passed to
  :func:`~mmkit.nn.attend` as ``bias``; the causal mask (and the ``same_length``
  window) is applied inside the normalizer.
- **``clamp_len``.** Distances above ``clamp_len`` use the encoding of ``clamp_len``
  (the original clamps its position sequence the same way); ``<= 0`` turns it off.
- **``same_length``.** Every query sees the same number of keys: the query at key
  position ``p`` attends to keys ``p - mem_len < j <= p`` (the window of the original's
  ``MemTransformerLM._forward`` mask; it needs ``mem_len >= 1``).
- **Initialisation.** :func:`init_transformer_xl`: the original's ``weights_init`` or
  mmkit's earlier xavier scheme.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from ..normalizers import Normalizer, NormalizerSpec
from .attention import attend, build_attention_normalizer
from .blocks import Mlp, Residual
from .positions import sinusoid


def relative_positions(num_keys: int, dim: int, clamp_len: int = -1,
                       device: torch.device | None = None) -> Tensor:
    """``[K, dim]`` encodings of the distances ``0 .. K-1``, each clamped to ``clamp_len``
    when it is positive (row ``d`` encodes distance ``min(d, clamp_len)``)."""
    distances = torch.arange(num_keys, device=device)
    if clamp_len > 0:
        distances = distances.clamp(max=clamp_len)
    return sinusoid(distances, dim)


def same_length_mask(num_queries: int, num_keys: int, mem_len: int,
                     device: torch.device | None = None) -> Tensor:
    """``[Nq, Nk]`` keep-mask: the query at key position ``p = Nk - Nq + i`` may see keys
    ``j > p - mem_len`` (combine it with the causal mask, which keeps ``j <= p``)."""
    if mem_len < 1:
        raise ValueError(f"same_length needs mem_len >= 1 (a window of mem_len keys), got {mem_len}")
    p = num_keys - num_queries + torch.arange(num_queries, device=device)[:, None]  # [Nq, 1]
    return torch.arange(num_keys, device=device)[None, :] > p - mem_len  # [Nq, Nk]


class RelativeAttention(nn.Module):
    """Multi-head attention over ``[memory; segment]`` with relative positions.

    With ``own_biases`` the layer holds its own ``u``/``v`` (``[H, Dh]``); without, the
    model passes shared ones to :meth:`forward` (the original Transformer-XL).
    """

    def __init__(self, d_model: int, n_head: int, d_head: int, normalizer: NormalizerSpec,
                 per_head: bool, dropout: float, dropatt: float, pre_norm: bool,
                 own_biases: bool = True) -> None:
        super().__init__()
        self.n_head, self.d_head, self.dropatt, self.pre_norm = n_head, d_head, dropatt, pre_norm
        self.q = nn.Linear(d_model, n_head * d_head, bias=False)
        self.kv = nn.Linear(d_model, 2 * n_head * d_head, bias=False)
        self.r = nn.Linear(d_model, n_head * d_head, bias=False)
        self.u = nn.Parameter(torch.zeros(n_head, d_head)) if own_biases else None  # content bias
        self.v = nn.Parameter(torch.zeros(n_head, d_head)) if own_biases else None  # position bias
        self.out = nn.Linear(n_head * d_head, d_model, bias=False)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.normalizer = build_attention_normalizer(normalizer, n_head if per_head else None)

    def forward(self, h: Tensor, mem: Tensor | None, pos: Tensor, u: Tensor | None = None,
                v: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
        """``h`` ``[B, T, C]``, ``mem`` ``[B, M, C]``, ``pos`` ``[M+T, C]`` for distances
        ``0 .. M+T-1``, shared ``u``/``v`` ``[H, Dh]`` (ignored when the layer has its own),
        an optional extra keep-mask ``[T, M+T]``; returns the block output ``[B, T, C]``."""
        u = self.u if self.u is not None else u
        v = self.v if self.v is not None else v
        if u is None or v is None:
            raise ValueError("this layer shares u/v with the model: pass u and v")
        b, t, _ = h.shape
        context = h if mem is None else torch.cat([mem, h], dim=1)  # [B, K, C]
        if self.pre_norm:
            context = self.norm(context)
        k_len, m_len = context.shape[1], context.shape[1] - t
        query_in = context[:, m_len:]
        q = self.q(query_in).view(b, t, self.n_head, self.d_head).transpose(1, 2)  # [B, H, T, Dh]
        k, val = self.kv(context).view(b, k_len, 2 * self.n_head, self.d_head).transpose(1, 2).chunk(2, 1)
        r = self.r(pos).view(k_len, self.n_head, self.d_head).permute(1, 2, 0)  # [H, Dh, K]
        scale = self.d_head ** -0.5
        by_distance = (q + v[:, None]) @ r  # [B, H, T, K]: column d = distance d
        distance = (m_len + torch.arange(t, device=h.device)[:, None]
                    - torch.arange(k_len, device=h.device)[None, :]).clamp_min(0)  # [T, K]
        bias = by_distance.gather(-1, distance.expand(b, self.n_head, t, k_len)) * scale
        out = attend(q + u[:, None], k, val, self.normalizer, mask=keep, causal=True, bias=bias,
                     dropout_p=self.dropatt if self.training else 0.0, scale=scale)
        out = self.drop(self.out(out.transpose(1, 2).reshape(b, t, -1)))  # [B, T, C]
        return h + out if self.pre_norm else self.norm(h + out)


class FeedForward(Residual):
    """The position-wise ReLU feed-forward block (:class:`~mmkit.nn.blocks.Mlp`, dropout after
    each layer as in the original) inside its residual and LayerNorm."""

    def __init__(self, d_model: int, d_inner: int, dropout: float, pre_norm: bool) -> None:
        super().__init__(d_model, 0.0, pre_norm)
        self.net = Mlp(d_model, d_inner, dropout, "relu")

    def forward(self, h: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(h, self.net)


def _self_initialising(module: nn.Module) -> bool:
    """Whether ``module`` initialises itself as the original (``reset_parameters(std, proj_std)``:
    the adaptive input and head)."""
    reset = getattr(module, "reset_parameters", None)
    return callable(reset) and "proj_std" in inspect.signature(reset).parameters


def init_transformer_xl(model: nn.Module, scheme: str, std: float, head: nn.Module,
                        embed: nn.Module, position_biases: list[nn.Parameter]) -> None:
    """Initialise every parameter of ``model`` but its normalizers'.

    - ``original`` (the original's ``weights_init``): linear weights and embeddings
      ``N(0, std)``, biases 0, LayerNorm weights ``N(1, std)``, ``position_biases`` ``N(0, std)``;
      self-initialising modules get ``reset_parameters(std=std)``, ``embed`` last (the
      original re-applies its init to the word embedding after the whole model).
    - ``xavier`` (mmkit's earlier scheme): embeddings ``N(0, std)`` (pass ``d_model^-1/2``),
      xavier-uniform linear weights except ``head``'s (tied, or torch's init), biases 0,
      LayerNorm (1, 0), zero ``position_biases``.
    """
    original = scheme == "original"
    normalizer_parts = {id(m) for n in model.modules() if isinstance(n, Normalizer) for m in n.modules()}
    hooks = []
    for module in model.modules():
        if id(module) in normalizer_parts or module is model:
            continue
        if _self_initialising(module):
            hooks.append(module)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight, 1.0, std if original else 0.0)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if original and module.weight is not getattr(embed, "weight", None):
                nn.init.normal_(module.weight, std=std)
            elif not original and module is not head:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in hooks + [embed] if embed in hooks else hooks:
        module.reset_parameters(std=std)
    for bias in position_biases:
        nn.init.normal_(bias, std=std if original else 0.0)
