"""The paper's Figure 1 toy input ``v = (10, 8, -1)`` through every normalizer."""

from __future__ import annotations

import torch

from ..normalizers import NORMALIZERS, Entmax, MultiMax, Normalizer, SoftMax, build_normalizer
from .measures import multimodality, sparsity

FIGURE1_INPUT = (10.0, 8.0, -1.0)
#: ε between -1 and 8 splits v into relevant {10, 8} and irrelevant {-1} entries.
FIGURE1_EPS = 0.0
#: Hand-picked SegLU parameters: sharpen below b1 = 2 (slope 3), flatten above d1 = 6 (slope 0.5).
ILLUSTRATIVE_RANGES = (2.0, 6.0, 0.0, 0.0)
ILLUSTRATIVE_TS = (-2.0, -0.5, 0.0, 0.0)


def figure1_normalizers() -> list[tuple[str, Normalizer]]:
    """Every registry normalizer at its defaults, plus a few informative variants."""
    with torch.random.fork_rng():  # MultiMax's random init, reproducibly
        torch.manual_seed(0)
        rows = [(name if name != "multimax" else "multimax (init, seed 0)", build_normalizer(name))
                for name in NORMALIZERS]
    rows.insert(1, ("softmax T=0.5", SoftMax(temperature=0.5)))
    rows.insert(2, ("softmax T=2", SoftMax(temperature=2.0)))
    rows.append(("entmax alpha=1.25", Entmax(alpha=1.25)))
    shaped = MultiMax()
    with torch.no_grad():
        shaped.ranges.copy_(torch.tensor(ILLUSTRATIVE_RANGES))
        shaped.ts.copy_(torch.tensor(ILLUSTRATIVE_TS))
    rows.append(("multimax (shaped)", shaped))
    return rows


def figure1_table(normalizers: list[tuple[str, Normalizer]] | None = None) -> str:
    """A Markdown table of probabilities, S and M on ``v = (10, 8, -1)`` (eval mode)."""
    v = torch.tensor(FIGURE1_INPUT, dtype=torch.float64)
    lines = [
        f"Figure 1 input v = {FIGURE1_INPUT}, eps = {FIGURE1_EPS}",
        "",
        "| normalizer | p(10) | p(8) | p(-1) | sparsity S | multi-modality M |",
        "|---|---|---|---|---|---|",
    ]
    for name, norm in normalizers or figure1_normalizers():
        norm = norm.double().eval()
        with torch.no_grad():
            p = norm(v)
        s = float(sparsity(v, p, FIGURE1_EPS))
        m = float(multimodality(v, p, FIGURE1_EPS))
        lines.append(f"| {name} | {p[0]:.4f} | {p[1]:.4f} | {p[2]:.3g} | {s:.4f} | {m:.4f} |")
    lines += ["", "multimax (shaped): ranges = {}, ts = {}".format(ILLUSTRATIVE_RANGES, ILLUSTRATIVE_TS)]
    return "\n".join(lines)
