"""The ablation's outputs: ``results.csv`` (one row per run), ``results.md`` (mean ±
std per normalizer and task, best marked) and ``results.png`` (bars with error bars,
and validation curves)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from ..files import atomic_open, write_text_atomic
from .grid import AblationSpec
from .runner import read_metrics

FIXED_COLUMNS = ["id", "config", "normalizer", "seed"]
TAIL_COLUMNS = ["wall_s", "ckpt"]
LOWER_IS_BETTER = ("loss", "ppl", "bpb", "nll", "err")
PRIMARY = ("acc1", "bleu", "ppl", "acc")


def lower_is_better(metric: str) -> bool:
    return any(word in metric.split("/")[-1] for word in LOWER_IS_BETTER)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    metrics = sorted({k for row in rows for k in row} - set(FIXED_COLUMNS) - set(TAIL_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIXED_COLUMNS + metrics + TAIL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, out.getvalue())


def table_metrics(spec: AblationSpec, rows: list[dict[str, Any]]) -> list[str]:
    """The metrics of the table: ``spec.metrics``, or every ``test/*`` metric logged."""
    if spec.metrics:
        return list(spec.metrics)
    return sorted({k for row in rows for k in row if k.startswith("test/")})


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def summary_table(spec: AblationSpec, rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per normalizer, one column per (task, metric), mean ± std over
    seeds; the best mean of each column is in bold (higher is better unless the name
    says loss, ppl, bpb, nll or err)."""
    metrics = table_metrics(spec, rows)
    tasks = list(dict.fromkeys(Path(r["config"]).stem for r in rows))
    normalizers = [n for n in spec.overlays if any(r["normalizer"] == n for r in rows)]
    columns = [(t, m) for t in tasks for m in metrics
               if any(Path(r["config"]).stem == t and m in r for r in rows)]
    cells: dict[tuple[str, str, str], tuple[float, float, int]] = {}
    for t, m in columns:
        for n in normalizers:
            values = [float(r[m]) for r in rows if r["normalizer"] == n and Path(r["config"]).stem == t
                      and m in r and not math.isnan(float(r[m]))]
            if values:
                cells[t, m, n] = (*_mean_std(values), len(values))
    header = ["normalizer"] + [f"{t} {m}" + (" ↓" if lower_is_better(m) else " ↑") for t, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for t, m in columns:
        means = {n: cells[t, m, n][0] for n in normalizers if (t, m, n) in cells}
        if means:
            best[t, m] = (min if lower_is_better(m) else max)(means, key=means.get)
    for n in normalizers:
        entries = [n]
        for t, m in columns:
            if (t, m, n) not in cells:
                entries.append("–")
                continue
            mean, std, count = cells[t, m, n]
            text = f"{_fmt(mean)} ± {_fmt(std)}" if count > 1 else _fmt(mean)
            entries.append(f"**{text}**" if best.get((t, m)) == n else text)
        lines.append("| " + " | ".join(entries) + " |")
    seeds = sorted({r["seed"] for r in rows})
    lines.append("")
    lines.append(f"mean ± std over seeds {seeds} (n per cell = runs finished); best in bold.")
    return "\n".join(lines)


def primary_metric(metrics: list[str]) -> str | None:
    for word in PRIMARY:
        for m in metrics:
            if m.split("/")[-1] == word:
                return m
    return metrics[0] if metrics else None


def _val_curve(cell_dir: Path, metric: str) -> list[tuple[float, float]]:
    _, rows = read_metrics(cell_dir / "run" / "metrics.csv")
    points: dict[float, float] = {}
    for row in rows:  # a resumed run may repeat steps: the later value wins
        if row.get(metric) not in (None, "") and row.get("step") not in (None, ""):
            points[float(row["step"])] = float(row[metric])
    return sorted(points.items())


def plot(spec: AblationSpec, rows: list[dict[str, Any]], path: Path) -> None:
    """Per task: the primary test metric as bars (mean, error bar = std over seeds) and
    its validation curve per normalizer (mean over seeds) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["config"] for r in rows))
    normalizers = [n for n in spec.overlays if any(r["normalizer"] == n for r in rows)]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.8 * len(tasks), 7), squeeze=False)
    colors = {n: f"C{i}" for i, n in enumerate(normalizers)}
    for j, config in enumerate(tasks):
        task_rows = [r for r in rows if r["config"] == config]
        metric = primary_metric(table_metrics(spec, task_rows))
        bars, curves = axes[0][j], axes[1][j]
        if metric is None:
            continue
        for i, n in enumerate(normalizers):
            values = [float(r[metric]) for r in task_rows if r["normalizer"] == n and metric in r]
            if values:
                mean, std = _mean_std(values)
                bars.bar(i, mean, yerr=std, capsize=4, color=colors[n])
            val_metric = "val/" + metric.split("/", 1)[-1]
            runs = [_val_curve(spec.root / "cells" / r["id"], val_metric)
                    for r in task_rows if r["normalizer"] == n]
            runs = [c for c in runs if c]
            if runs:
                steps = sorted(set.intersection(*(set(s for s, _ in c) for c in runs)))
                means = [statistics.fmean(dict(c)[s] for c in runs) for s in steps]
                curves.plot(steps, means, marker=".", color=colors[n], label=n)
        bars.set_xticks(range(len(normalizers)), normalizers, rotation=30)
        bars.set_title(f"{Path(config).stem}: {metric}")
        curves.set_title(f"validation {metric.split('/', 1)[-1]}")
        curves.set_xlabel("step")
        if curves.lines:
            curves.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)


def write_reports(spec: AblationSpec, rows: list[dict[str, Any]]) -> dict[str, Path]:
    """Write the CSV and, when there are rows, the Markdown table and the plot (else any old
    table and plot are removed: they would describe cells no longer in the grid's results).
    Returns the paths written."""
    paths = {"csv": spec.root / "results.csv", "table": spec.root / "results.md",
             "plot": spec.root / "results.png"}
    write_csv(rows, paths["csv"])
    if not rows:
        for key in ("table", "plot"):
            paths.pop(key).unlink(missing_ok=True)
        return paths
    write_text_atomic(paths["table"], summary_table(spec, rows) + "\n")
    plot(spec, rows, paths["plot"])
    return paths
