"""Helpers for tests that read what ``AttentionStatistics`` logged to metrics.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from mmkit.analysis.stats import layer_name, sigma_names
from mmkit.normalizers import MultiMax

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = str(ROOT / "configs/callbacks/attention_stats.yaml")
STATS = ("S", "M", "entropy", "frac_small")


def last_row(run: Path) -> dict[str, float]:
    """The one metrics.csv row with attention statistics, as floats."""
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if any(k.startswith("attn/") and v for k, v in r.items())]
    assert len(rows) == 1
    return {k: float(v) for k, v in rows[0].items() if v and k.startswith(("attn/", "sigma/", "param/"))}


def assert_stats(logged: dict[str, float], layers: list[str]) -> None:
    """Every layer has all four statistics, finite and in range."""
    assert layers
    for layer in layers:
        values = [logged[f"attn/{layer}/{stat}"] for stat in STATS]
        assert all(math.isfinite(v) for v in values), (layer, values)
        s, m, entropy, small = values
        assert 0.0 <= s <= 1.0 and m <= 1.0 and entropy >= 0.0 and 0.0 <= small <= 1.0


def assert_sigma(logged: dict[str, float], network: torch.nn.Module) -> None:
    """Every MultiMax's logged σ parameters equal its current values."""
    multimaxes = [(layer_name(f"network.{n}"), m) for n, m in network.named_modules()
                  if isinstance(m, MultiMax)]
    assert multimaxes
    for layer, module in multimaxes:
        for values, names in zip((module.ranges, module.ts), sigma_names(module.order)):
            for j, key in enumerate(names):
                expected = float(values.detach().reshape(-1, len(names))[:, j].mean())
                assert logged[f"sigma/{layer}/{key}"] == pytest.approx(expected, abs=1e-6)


def assert_vit_stats_match(logged: dict[str, float], network: torch.nn.Module, images: torch.Tensor) -> None:
    """The logged per-block statistics equal the reference computed on ``images``."""
    from mmkit.nn.attention import capture_attention

    from .reference import reference_stats

    calls: dict[int, list] = {}
    with torch.no_grad(), capture_attention(lambda n, s, p, k: calls.setdefault(id(n), []).append((s, p, k))):
        network(images)
    for i, block in enumerate(network.blocks):
        expected = reference_stats(calls[id(block.attn.normalizer)])
        for stat in STATS:
            assert logged[f"attn/blocks.{i}.attn/{stat}"] == pytest.approx(expected[stat], rel=1e-4, abs=1e-5)
