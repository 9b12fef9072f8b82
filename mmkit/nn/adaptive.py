"""Adaptive input embeddings and an adaptive softmax head (Baevski & Auli 2019; Grave et al.
2017), laid out as in the original Transformer-XL, with any output normalizer.

**Clusters.** Cutoffs ``c_1 < … < c_n`` split the vocabulary into a shortlist
``[0, c_1)`` (cluster 0) and tail clusters ``i = 1..n`` with ids ``[c_i, c_{i+1})``,
``c_{n+1} = V``. Cluster ``i`` has vectors of size ``d_embed // div_val**i``.

- ``div_val == 1``: one ``[V, d_embed]`` table (the head slices it per cluster), and no
  projection when ``d_embed == d_model`` (so with no cutoffs :class:`AdaptiveInput` is
  ``Embedding(V, d_model)·√d_model`` and :class:`AdaptiveHead` a plain linear layer);
  otherwise one input projection and one head projection per cluster, as the original.
- ``div_val > 1``: one table per cluster and a projection ``P_i`` ``[d_model, d_i]`` for
  every cluster, the shortlist included.

**Input.** ``x = E_i[w - c_i] P_iᵀ · √d_model``: the original scales by ``√d_model`` after
the projection, for every cluster.

**Head.** The head scores ``z_0 = [shortlist logits; one logit per tail cluster]`` (in
cluster order: column ``c_1 + i - 1`` is cluster ``i``; the original stores them reversed);
cluster ``i`` scores ``z_i = (h P_i) W_iᵀ + b_i``. With an output normalizer ``φ`` (the same
module, hence the same parameters, at every level):

- ``p(w) = φ(z_0)[w]`` in the shortlist, ``p(w) = φ(z_0)[c_1 + i - 1] · φ(z_i)[w - c_i]`` in
  cluster ``i``. Every level is a distribution, so ``p`` sums to 1 over the vocabulary. For
  SoftMax this is exactly the original's adaptive softmax.
- ``log p`` (:meth:`AdaptiveHead.log_probs`, :meth:`AdaptiveHead.target_log_prob`) is the sum
  of the levels' log-probabilities: ``log_softmax(σ(z))`` for a modulated softmax (SoftMax,
  MultiMax), ``log φ(z)`` otherwise (``-inf`` where a sparse ``φ`` gives 0).
- **Training loss** (:meth:`AdaptiveHead.loss`): per token, ``ℓ(z_0, head target)`` plus, for a
  tail target, ``ℓ(z_i, w - c_i)``, where ``ℓ`` is the normalizer's own loss; the mean over
  the non-ignored tokens. For SoftMax and MultiMax (cross-entropy on σ(z)) this is exactly
  ``-log p(w)``. For SparseMax/EntMax it is the sum of the two levels' Fenchel-Young losses
  (zero exactly when both levels put all their mass on the target's entries), not
  ``-log p(w)``, which can be infinite; for EvSoftMax the NLL of its ε-version at each level.
  Label smoothing, when asked for, is applied within each level.

Tying (:meth:`AdaptiveHead.tie_`) shares the cluster tables ``W_i = E_i`` and, per cluster,
the projections ``P_i`` with an :class:`AdaptiveInput`, as the original's ``tie_weight`` and
``tie_projs`` (the output biases and the head's cluster entries are never tied). The input
and the loss run every cluster on every call (possibly on zero tokens), so every parameter
is in the graph (DDP needs no ``find_unused_parameters``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..normalizers import Normalizer


def check_adaptive(vocab_size: int, d_model: int, cutoffs: Sequence[int], div_val: int,
                   d_embed: int | None = None) -> list[int]:
    """Validate the adaptive layout; returns the cutoffs as a list (``ValueError`` if bad)."""
    cutoffs = list(cutoffs)
    if vocab_size < 1 or d_model < 1 or (d_embed is not None and d_embed < 1):
        raise ValueError(f"vocab_size, d_model and d_embed must be positive, got {vocab_size}, "
                         f"{d_model} and {d_embed}")
    if any(isinstance(c, bool) or not isinstance(c, int) for c in cutoffs):
        raise ValueError(f"cutoffs must be integers, got {cutoffs}")
    if any(c <= 0 for c in cutoffs) or any(b <= a for a, b in zip(cutoffs, cutoffs[1:])):
        raise ValueError(f"cutoffs must be positive and strictly increasing, got {cutoffs}")
    if cutoffs and cutoffs[-1] >= vocab_size:
        raise ValueError(f"cutoffs must be < vocab_size = {vocab_size}, got {cutoffs}")
    if isinstance(div_val, bool) or not isinstance(div_val, int) or div_val < 1:
        raise ValueError(f"div_val must be an integer >= 1, got {div_val!r}")
    d = d_model if d_embed is None else d_embed
    if d // div_val ** len(cutoffs) < 1:
        raise ValueError(f"the last cluster's size d_embed // div_val**{len(cutoffs)} = "
                         f"{d} // {div_val ** len(cutoffs)} is 0; use a smaller div_val or fewer cutoffs")
    return cutoffs


class _Layout(nn.Module):
    """What :class:`AdaptiveInput` and :class:`AdaptiveHead` share: bounds and sizes."""

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], div_val: int,
                 d_embed: int | None) -> None:
        super().__init__()
        self.cutoffs = check_adaptive(vocab_size, d_model, cutoffs, div_val, d_embed)
        self.vocab_size, self.d_model, self.div_val = vocab_size, d_model, div_val
        self.d_embed = d_model if d_embed is None else d_embed
        self.bounds = [0, *self.cutoffs, vocab_size]  # cluster i: ids [bounds[i], bounds[i+1])
        self.dims = [self.d_embed // div_val ** i for i in range(len(self.bounds) - 1)]
        self.has_proj = div_val > 1 or self.d_embed != d_model

    @property
    def n_clusters(self) -> int:
        """The number of tail clusters (``len(cutoffs)``)."""
        return len(self.cutoffs)

    def cluster_of(self, ids: Tensor) -> Tensor:
        """The cluster index of each id (0: the shortlist)."""
        cluster = torch.zeros_like(ids)
        for c in self.cutoffs:  # a few comparisons: no boundary tensor to keep on the device
            cluster += ids >= c
        return cluster

    def _new_projections(self, count: int) -> nn.ParameterList:
        dims = self.dims if self.div_val > 1 else [self.d_embed] * count
        return nn.ParameterList(nn.Parameter(torch.empty(self.d_model, d)) for d in dims[:count])

    def extra_repr(self) -> str:
        return (f"vocab_size={self.vocab_size}, d_model={self.d_model}, cutoffs={self.cutoffs}, "
                f"div_val={self.div_val}, d_embed={self.d_embed}")


class AdaptiveInput(_Layout):
    """Adaptive input: ``tokens [...] -> [..., d_model]``, scaled by ``√d_model``.

    Args:
        vocab_size: number of token ids.
        d_model: output size.
        cutoffs: the tail clusters' first ids (none: a single table).
        div_val: each cluster's vectors are ``div_val`` times smaller than the previous one's.
        d_embed: the shortlist's vector size (``d_model`` by default, as the original).
        scale: multiply by ``√d_model`` (as the original, after the projection); a model that
            scales its embeddings itself passes ``False``.
    """

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int] = (), div_val: int = 1,
                 d_embed: int | None = None, scale: bool = True) -> None:
        super().__init__(vocab_size, d_model, cutoffs, div_val, d_embed)
        sizes = [vocab_size] if div_val == 1 else [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        self.embeddings = nn.ModuleList(nn.Embedding(n, d) for n, d in zip(sizes, self.dims))
        self.projections = self._new_projections(len(sizes) if self.has_proj else 0)
        self.scale = d_model ** 0.5 if scale else 1.0
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02, proj_std: float = 0.01) -> None:
        """The original's init: tables ``N(0, std)``, projections ``N(0, proj_std)``."""
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=std)
        for proj in self.projections:
            nn.init.normal_(proj, std=proj_std)

    def forward(self, tokens: Tensor) -> Tensor:
        if self.div_val == 1:
            x = self.embeddings[0](tokens)  # [..., d_embed]
            if self.has_proj:
                x = F.linear(x, self.projections[0])  # [..., d_model]
            return x * self.scale
        flat = tokens.reshape(-1)  # [N]
        cluster = self.cluster_of(flat)
        weight = self.embeddings[0].weight
        out = weight.new_zeros(flat.shape[0], self.d_model)  # [N, d_model]
        for i, (emb, proj) in enumerate(zip(self.embeddings, self.projections)):
            idx = (cluster == i).nonzero().squeeze(1)  # [N_i]
            x = F.linear(emb(flat[idx] - self.bounds[i]), proj)  # [N_i, d_model]
            out = out.index_copy(0, idx, x.to(out.dtype))
        return out.view(*tokens.shape, self.d_model) * self.scale


class AdaptiveHead(_Layout):
    """Adaptive softmax over ``hidden [..., d_model]`` with any output normalizer (passed to
    each call, so the model keeps one ``output_normalizer``). Arguments as
    :class:`AdaptiveInput`; see the module docstring for what is computed."""

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int] = (), div_val: int = 1,
                 d_embed: int | None = None) -> None:
        super().__init__(vocab_size, d_model, cutoffs, div_val, d_embed)
        sizes = [vocab_size] if div_val == 1 else [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(n, d)) for n, d in zip(sizes, self.dims))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes)
        n = self.n_clusters  # the head's entries of the tail clusters (none without cutoffs)
        self.cluster_weight = nn.Parameter(torch.empty(n, self.d_embed)) if n else None
        self.cluster_bias = nn.Parameter(torch.zeros(n)) if n else None
        self.projections = self._new_projections(self.n_clusters + 1 if self.has_proj else 0)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02, proj_std: float = 0.01) -> None:
        """The original's init: weights ``N(0, std)``, biases 0, projections ``N(0, proj_std)``."""
        for w in (*self.weights, self.cluster_weight):
            if w is not None:
                nn.init.normal_(w, std=std)
        for b in (*self.biases, self.cluster_bias):
            if b is not None:
                nn.init.zeros_(b)
        for proj in self.projections:
            nn.init.normal_(proj, std=proj_std)

    def tie_(self, inp: AdaptiveInput, weights: bool = True, projections: Sequence[bool] = ()) -> None:
        """Share ``inp``'s tables (``weights``) and, for each cluster ``i`` with
        ``projections[i]`` (the shortlist first), its projection, as the original's
        ``tie_weight`` / ``tie_projs``."""
        if (inp.vocab_size, inp.d_model, inp.cutoffs, inp.div_val, inp.d_embed) != (
                self.vocab_size, self.d_model, self.cutoffs, self.div_val, self.d_embed):
            raise ValueError(f"cannot tie an adaptive head ({self.extra_repr()}) to a different "
                             f"adaptive input ({inp.extra_repr()})")
        if len(projections) not in (0, self.n_clusters + 1):
            raise ValueError(f"tie_projs needs one flag per cluster ({self.n_clusters + 1}, the "
                             f"shortlist first), got {list(projections)}")
        if weights:
            for i, emb in enumerate(inp.embeddings):
                self.weights[i] = emb.weight
        for i, tie in enumerate(projections):
            if tie and self.has_proj:  # nothing to tie without projections (as the original)
                self.projections[i] = inp.projections[0 if self.div_val == 1 else i]

    def logits(self, hidden: Tensor, i: int) -> Tensor:
        """Cluster ``i``'s scores ``[N, size_i]`` of ``hidden`` ``[N, d_model]`` (cluster 0:
        the head, shortlist then one entry per tail cluster)."""
        if self.has_proj:
            hidden = hidden @ self.projections[i]  # [N, d_model] x [d_model, d_i]
        if self.div_val == 1:
            lo, hi = self.bounds[i], self.bounds[i + 1]
            weight, bias = self.weights[0][lo:hi], self.biases[0][lo:hi]
        else:
            weight, bias = self.weights[i], self.biases[i]
        if i == 0 and self.n_clusters:
            weight = torch.cat([weight, self.cluster_weight])  # [c_1 + n, d_embed]
            bias = torch.cat([bias, self.cluster_bias])
        return F.linear(hidden, weight, bias)

    def _head_target(self, target: Tensor) -> tuple[Tensor, Tensor]:
        """Each target's cluster and its column in the head (ignored ids stay as they are)."""
        cluster = self.cluster_of(target)
        return cluster, torch.where(cluster == 0, target, self.bounds[1] - 1 + cluster)

    def log_probs(self, hidden: Tensor, normalizer: Normalizer) -> Tensor:
        """``log p(w)`` for the whole vocabulary: ``[..., d_model] -> [..., V]`` (fp32 at least)."""
        h = hidden.reshape(-1, self.d_model)  # [N, d_model]
        head = normalizer.log_probs(self.logits(h, 0))  # [N, c_1 + n]
        shortlist = self.bounds[1]
        parts = [head[:, :shortlist]]
        for i in range(1, self.n_clusters + 1):
            parts.append(head[:, shortlist + i - 1, None] + normalizer.log_probs(self.logits(h, i)))
        return torch.cat(parts, dim=-1).view(*hidden.shape[:-1], self.vocab_size)

    def forward(self, hidden: Tensor, normalizer: Normalizer) -> Tensor:
        return self.log_probs(hidden, normalizer)

    def target_log_prob(self, hidden: Tensor, target: Tensor, normalizer: Normalizer) -> Tensor:
        """``log p(target)`` ``[...]`` for ids ``target`` ``[...]`` in ``[0, V)``, computing each
        tail cluster only for the tokens whose target lies in it."""
        h, t = hidden.reshape(-1, self.d_model), target.reshape(-1)  # [N, d_model], [N]
        cluster, head_t = self._head_target(t)
        out = normalizer.log_probs(self.logits(h, 0)).gather(-1, head_t[:, None])[:, 0]  # [N]
        for i in range(1, self.n_clusters + 1):
            idx = (cluster == i).nonzero().squeeze(1)  # [N_i]
            if idx.numel() == 0:
                continue
            logp = normalizer.log_probs(self.logits(h[idx], i))  # [N_i, size_i]
            inner = logp.gather(-1, (t[idx] - self.bounds[i])[:, None])[:, 0]
            out = out.index_add(0, idx, inner)
        return out.view(target.shape)

    def loss(self, hidden: Tensor, target: Tensor, normalizer: Normalizer, *, ignore_index: int = -100,
             label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
        """The head-level loss plus the in-cluster loss of tail targets (module docstring), per
        token; ``reduction`` ``"mean"`` (over non-ignored tokens), ``"sum"`` or ``"none"``."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        h, t = hidden.reshape(-1, self.d_model), target.reshape(-1)  # [N, d_model], [N]
        valid = t != ignore_index
        cluster, head_t = self._head_target(t)
        kw = dict(ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="none")
        rows = normalizer.loss(self.logits(h, 0), head_t, **kw)  # [N]
        for i in range(1, self.n_clusters + 1):
            idx = ((cluster == i) & valid).nonzero().squeeze(1)  # [N_i]
            z = self.logits(h[idx], i)  # [N_i, size_i]
            if idx.numel() == 0:  # keep the cluster's parameters in the graph
                rows = rows + 0.0 * z.sum()
                continue
            inner = normalizer.loss(z, t[idx] - self.bounds[i], **kw)  # [N_i]
            rows = rows.index_add(0, idx, inner.to(rows.dtype))
        if reduction == "none":
            return rows.view(target.shape)
        if reduction == "sum":
            return rows.sum()
        return rows.sum() / valid.sum()
