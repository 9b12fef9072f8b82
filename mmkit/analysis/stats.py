"""Per-layer attention statistics as summable totals (pure torch, no Lightning).

:func:`attention_sums` turns one attention call (scores, probabilities, keep-mask)
into a vector of totals (:data:`SUM_FIELDS`); totals add up over calls, batches
and DDP ranks, and :func:`summarize` turns them into the logged means:

- ``S``, ``M``: the paper's sparsity and multi-modality (:mod:`.measures`), averaged
  over the query rows where they are defined, with a per-row threshold ε (by
  default the mean of the row's kept scores, :func:`~.measures.row_mean_eps`);
- ``entropy``: ``-Σ p log p`` in nats, averaged over rows;
- ``frac_small``: the fraction of kept attention weights below ``small``.

Masked entries (keep-mask False or non-finite score) take no part, and query rows
with no kept entry are left out altogether.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .measures import multimodality, row_mean_eps, sparsity

#: The totals :func:`attention_sums` returns, in order.
SUM_FIELDS = ("rows", "S_sum", "S_rows", "M_sum", "M_rows", "entropy_sum", "small", "entries")
#: The statistics :func:`summarize` gives.
STAT_NAMES = ("S", "M", "entropy", "frac_small")
#: Rows per chunk are chosen so that a chunk holds about this many scores.
CHUNK_ELEMENTS = 1 << 22


def attention_sums(scores: Tensor, probs: Tensor, keep: Tensor | None, *, eps: float | None = None,
                   small: float = 1e-3) -> Tensor:
    """Totals (float64 ``[len(SUM_FIELDS)]``) of one attention call.

    Args:
        scores: the normalizer's input ``[..., Nk]`` (e.g. ``[B, H, Nq, Nk]``).
        probs: its output, same shape.
        keep: bool mask broadcastable to ``scores`` (True = attend), or ``None``.
        eps: a fixed relevance threshold for S and M; ``None``: the per-row mean of
            the kept scores.
        small: the threshold of ``frac_small``.
    """
    if scores.shape != probs.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and probs {tuple(probs.shape)} differ in shape")
    if small <= 0:
        raise ValueError(f"small must be > 0, got {small}")
    nk = scores.shape[-1]
    x = scores.detach().float().reshape(-1, nk)  # [R, Nk]
    p = probs.detach().float().reshape(-1, nk)  # [R, Nk]
    kept = torch.isfinite(x)
    if keep is not None:
        kept = kept & keep.expand(scores.shape).reshape(-1, nk)
    totals = torch.zeros(len(SUM_FIELDS), dtype=torch.float64, device=scores.device)
    step = max(1, CHUNK_ELEMENTS // max(nk, 1))
    for start in range(0, x.shape[0], step):
        totals += _chunk_sums(x[start:start + step], p[start:start + step],
                              kept[start:start + step], eps, small)
    return totals


def _chunk_sums(x: Tensor, p: Tensor, kept: Tensor, eps: float | None, small: float) -> Tensor:
    """Totals of rows ``x``, ``p``, ``kept`` ``[r, Nk]``; rows with nothing kept are dropped."""
    live = kept.any(-1)  # [r]
    x, p, kept = x[live], p[live], kept[live]
    threshold = row_mean_eps(x, kept) if eps is None else eps
    s = sparsity(x, p, threshold, mask=kept)  # [r'], NaN where undefined
    m = multimodality(x, p, threshold, mask=kept)
    kept_p = torch.where(kept, p, 0.0)
    entropy = -torch.special.xlogy(kept_p, kept_p).sum(-1)  # [r']
    s_ok, m_ok = ~torch.isnan(s), ~torch.isnan(m)
    values = [
        live.sum(), torch.where(s_ok, s, 0.0).sum(), s_ok.sum(), torch.where(m_ok, m, 0.0).sum(),
        m_ok.sum(), entropy.sum(), (kept & (p < small)).sum(), kept.sum(),
    ]
    return torch.stack([v.to(torch.float64) for v in values])


def layer_name(qualified: str) -> str:
    """The logged name of a normalizer: ``network.blocks.0.attn.normalizer`` -> ``blocks.0.attn``
    (``network.output_normalizer`` -> ``output_normalizer``)."""
    name = qualified.removeprefix("network.")
    return name.removesuffix(".normalizer") or name


def sigma_names(order: int) -> tuple[list[str], list[str]]:
    """Names of MultiMax's ``ranges`` and ``ts`` entries: ``b1, d1, b2, d2`` and ``tb1, ...``."""
    ranges = [f"{side}{n}" for n in range(1, order + 1) for side in ("b", "d")]
    return ranges, [f"t{r}" for r in ranges]


def summarize(totals: Tensor) -> dict[str, float]:
    """The statistics of :data:`STAT_NAMES` from totals; undefined ones are left out."""
    t = dict(zip(SUM_FIELDS, totals.double().tolist()))
    out: dict[str, float] = {}
    if t["S_rows"] > 0:
        out["S"] = t["S_sum"] / t["S_rows"]
    if t["M_rows"] > 0:
        out["M"] = t["M_sum"] / t["M_rows"]
    if t["rows"] > 0:
        out["entropy"] = t["entropy_sum"] / t["rows"]
    if t["entries"] > 0:
        out["frac_small"] = t["small"] / t["entries"]
    return out
