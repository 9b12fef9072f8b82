"""The statistics of an ablation's report: per task and normalizer the mean, standard
deviation and 95% t interval over seeds; per normalizer against the baseline (softmax) the
paired per-seed difference with its 95% t interval, marked where the interval excludes 0;
and the wall time per cell with its ratio to the baseline's.

Pairs are the runs of the same config and seed: with the same seed a cell sees the same
data order, and the same initial weights wherever the two architectures have the same
parameters. A normalizer with fewer than two pairs gets its difference but no interval
("n = 1"): nothing is claimed from one seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.summary import mean_ci, mean_std

BASELINE = "softmax"


@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation and the 95% t interval's half-width (``None`` for n = 1)."""

    mean: float
    std: float
    half: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        mean, std = mean_std(values)
        return cls(mean, std, mean_ci(values)[1], len(values))

    @property
    def no_spread(self) -> bool:
        """Two or more values, all equal (to rounding): the seeds varied nothing, so the zero-width
        interval is no evidence from replication."""
        return self.half is not None and self.half <= 1e-12 * max(1.0, abs(self.mean))

    def excludes_zero(self) -> bool:
        """The 95% interval excludes 0 (never for one value, or for values without spread)."""
        return self.half is not None and not self.no_spread and abs(self.mean) > self.half


def _value(row: dict[str, Any], metric: str) -> float | None:
    raw = row.get(metric)
    if raw in (None, ""):
        return None
    value = float(raw)
    return None if math.isnan(value) else value


def task_of(row: dict[str, Any]) -> str:
    return Path(row["config"]).stem


def per_normalizer(rows: list[dict[str, Any]], task: str, metric: str) -> dict[str, Summary]:
    """``{normalizer: Summary}`` of ``metric`` over the seeds of ``task``."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if task_of(row) == task and (value := _value(row, metric)) is not None:
            values.setdefault(row["normalizer"], []).append(value)
    return {n: Summary.of(v) for n, v in values.items()}


def paired_differences(rows: list[dict[str, Any]], task: str, metric: str,
                       baseline: str = BASELINE) -> dict[str, Summary]:
    """``{normalizer: Summary of (normalizer - baseline)}`` over the seeds both ran on
    ``task``; the baseline itself and normalizers with no common seed are left out."""
    by_seed: dict[str, dict[str, float]] = {}
    for row in rows:
        if task_of(row) == task and (value := _value(row, metric)) is not None:
            by_seed.setdefault(row["normalizer"], {})[str(row["seed"])] = value
    base = by_seed.get(baseline, {})
    out = {}
    for normalizer, seeds in by_seed.items():
        common = sorted(set(seeds) & set(base))
        if normalizer != baseline and common:
            out[normalizer] = Summary.of([seeds[s] - base[s] for s in common])
    return out


def time_ratios(rows: list[dict[str, Any]], task: str, baseline: str = BASELINE) -> dict[str, float]:
    """``{normalizer: mean wall time per cell / the baseline's}`` on ``task`` (fit and test
    together, on the machine the grid ran on); empty without a baseline."""
    walls = per_normalizer(rows, task, "wall_s")
    if baseline not in walls or walls[baseline].mean <= 0:
        return {}
    return {n: s.mean / walls[baseline].mean for n, s in walls.items()}


def fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def interval_text(summary: Summary, signed: bool = False) -> str:
    """``mean [low, high]`` (or ``mean (n = 1)``, or ``mean (the same for all n)`` when the values
    do not differ); ``signed`` puts a + on positive means."""
    mean = f"{summary.mean:+.4g}" if signed else fmt(summary.mean)
    if summary.half is None:
        return f"{mean} (n = 1)"
    if summary.no_spread:
        return f"{mean} (the same for all {summary.n})"
    return f"{mean} [{fmt(summary.mean - summary.half)}, {fmt(summary.mean + summary.half)}]"


def comparison_table(rows: list[dict[str, Any]], tasks: list[str], metrics: list[str],
                     normalizers: list[str], baseline: str = BASELINE) -> str | None:
    """Markdown: per task, metric and normalizer the paired difference to ``baseline`` with
    its 95% interval (* where it excludes 0) and the wall-time ratio; ``None`` when the grid
    has no baseline runs."""
    if not any(r["normalizer"] == baseline for r in rows):
        return None
    lines = [f"| task | metric | normalizer | Δ vs {baseline} [95% CI] | pairs | time / {baseline} |",
             "|---|---|---|---|---|---|"]
    for task in tasks:
        ratios = time_ratios(rows, task, baseline)
        for metric in metrics:
            diffs = paired_differences(rows, task, metric, baseline)
            for normalizer in normalizers:
                if normalizer not in diffs:
                    continue
                summary = diffs[normalizer]
                delta = interval_text(summary, signed=True) + (" *" if summary.excludes_zero() else "")
                ratio = f"{ratios[normalizer]:.2f}x" if normalizer in ratios else "–"
                lines.append(f"| {task} | {metric} | {normalizer} | {delta} | {summary.n} | {ratio} |")
    lines += ["", f"Δ: the paired per-seed difference (normalizer − {baseline}, same config and seed), its "
              "mean and 95% t interval; * where the interval excludes 0. time: mean wall seconds per cell "
              f"(fit and test) over {baseline}'s, on the machine the grid ran on."]
    return "\n".join(lines)
