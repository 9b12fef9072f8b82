"""A slow, row-by-row reference of the attention statistics, written from the paper's
definitions (Defs 3.2 and 3.3) without mmkit.analysis."""

from __future__ import annotations

import math

import torch


def row_stats(x: list[float], p: list[float], eps: float | None, small: float) -> dict[str, float]:
    """S, M (NaN when undefined), entropy and the small-weight count of one kept row."""
    eps = sum(x) / len(x) if eps is None else eps
    top = max(range(len(x)), key=lambda i: x[i])
    relevant = [i for i in range(len(x)) if i != top and x[i] > eps]
    irrelevant = [i for i in range(len(x)) if x[i] < eps]
    z = sum(math.exp(v - x[top]) for v in x)
    s_ref = min(math.exp(v - x[top]) / z for v in x)
    m = 1 - sum(p[top] - p[i] for i in relevant) / len(relevant) if relevant else math.nan
    s = sum(math.exp(-p[i] / s_ref) for i in irrelevant) / len(irrelevant) if irrelevant else math.nan
    entropy = -sum(q * math.log(q) for q in p if q > 0)
    return {"S": s, "M": m, "entropy": entropy, "small": sum(q < small for q in p), "n": len(p)}


def reference_stats(calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
                    eps: float | None = None, small: float = 1e-3) -> dict[str, float]:
    """Means over all kept rows of all ``(scores, probs, keep)`` calls."""
    rows = []
    for scores, probs, keep in calls:
        nk = scores.shape[-1]
        kept = torch.isfinite(scores)
        if keep is not None:
            kept = kept & keep.expand(scores.shape)
        for xs, ps, ks in zip(scores.reshape(-1, nk).tolist(), probs.reshape(-1, nk).tolist(),
                              kept.reshape(-1, nk).tolist()):
            idx = [i for i, k in enumerate(ks) if k]
            if idx:
                rows.append(row_stats([xs[i] for i in idx], [ps[i] for i in idx], eps, small))
    out = {}
    for key in ("S", "M"):
        values = [r[key] for r in rows if not math.isnan(r[key])]
        if values:
            out[key] = sum(values) / len(values)
    out["entropy"] = sum(r["entropy"] for r in rows) / len(rows)
    out["frac_small"] = sum(r["small"] for r in rows) / sum(r["n"] for r in rows)
    return out
