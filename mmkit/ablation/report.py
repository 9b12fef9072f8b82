"""The ablation's outputs: ``results.csv`` (one row per run; checkpoint paths relative to
the grid's folder), ``results.md`` (mean ± std per normalizer and task, best marked) and
``results.png`` (per-seed points with the mean and its 95% t interval, and validation
curves). The statistics are :mod:`mmkit.analysis.summary`'s."""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.summary import mean_ci
from ..files import write_text_atomic
from .grid import AblationSpec
from .runner import read_metrics
from .statistics import Summary, comparison_table, fmt, per_normalizer

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn, not with the command
    from matplotlib.figure import Figure

FIXED_COLUMNS = ["id", "config", "normalizer", "seed"]
TAIL_COLUMNS = ["wall_s", "ckpt"]
LOWER_IS_BETTER = ("loss", "ppl", "bpb", "nll", "err")
PRIMARY = ("acc1", "bleu", "ppl", "acc")


LOG_SCALE = ("ppl",)  # exp(loss): its log axis is linear in the loss (and fits ε-smoothed sparse outputs)


def log_scaled(metric: str) -> bool:
    return metric.split("/")[-1] in LOG_SCALE


def lower_is_better(metric: str) -> bool:
    return any(word in metric.split("/")[-1] for word in LOWER_IS_BETTER)


def relative_path(value: Any, root: Path) -> Any:
    """``value`` relative to ``root`` when it is an absolute path inside ``root`` (so that
    ``root / result`` finds it wherever the grid's folder is moved), else unchanged."""
    if not value or not os.path.isabs(str(value)):
        return value
    path, base = Path(value).resolve(), Path(root).resolve()
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else value


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per run; ``ckpt`` is relative to the CSV's folder (the grid's ``spec.root``)."""
    metrics = sorted({k for row in rows for k in row} - set(FIXED_COLUMNS) - set(TAIL_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIXED_COLUMNS + metrics + TAIL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "ckpt": relative_path(row.get("ckpt"), path.parent)} if "ckpt" in row else row
                     for row in rows)
    write_text_atomic(path, out.getvalue())


def table_metrics(spec: AblationSpec, rows: list[dict[str, Any]]) -> list[str]:
    """The metrics of the table: ``spec.metrics``, or every ``test/*`` metric logged."""
    if spec.metrics:
        return list(spec.metrics)
    return sorted({k for row in rows for k in row if k.startswith("test/")})


def summary_table(spec: AblationSpec, rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per normalizer, one column per (task, metric), mean ± std over
    seeds and the mean's 95% t interval; the best mean of each column is in bold (higher is
    better unless the name says loss, ppl, bpb, nll or err). Below it, the paired
    comparison with softmax (:func:`mmkit.ablation.statistics.comparison_table`)."""
    metrics = table_metrics(spec, rows)
    tasks = list(dict.fromkeys(Path(r["config"]).stem for r in rows))
    normalizers = [n for n in spec.overlays if any(r["normalizer"] == n for r in rows)]
    columns = [(t, m) for t in tasks for m in metrics
               if any(Path(r["config"]).stem == t and m in r for r in rows)]
    cells: dict[tuple[str, str, str], Summary] = {}
    for t, m in columns:
        for n, summary in per_normalizer(rows, t, m).items():
            cells[t, m, n] = summary
    header = ["normalizer"] + [f"{t} {m}" + (" ↓" if lower_is_better(m) else " ↑") for t, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for t, m in columns:
        means = {n: cells[t, m, n].mean for n in normalizers if (t, m, n) in cells}
        if means:
            best[t, m] = (min if lower_is_better(m) else max)(means, key=means.get)
    for n in normalizers:
        entries = [n]
        for t, m in columns:
            if (t, m, n) not in cells:
                entries.append("–")
                continue
            cell = cells[t, m, n]
            text = fmt(cell.mean)
            if cell.half is not None:
                text += f" ± {fmt(cell.std)} [{fmt(cell.mean - cell.half)}, {fmt(cell.mean + cell.half)}]"
            entries.append(f"**{text}**" if best.get((t, m)) == n else text)
        lines.append("| " + " | ".join(entries) + " |")
    seeds = sorted({r["seed"] for r in rows})
    lines.append("")
    lines.append(f"mean ± std [95% t interval of the mean] over seeds {seeds} (n per cell = runs "
                 "finished); best mean in bold.")
    comparison = comparison_table(rows, tasks, metrics, normalizers)
    if comparison is not None:
        lines += ["", comparison]
    return "\n".join(lines)


def logged_metrics(metrics: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The ``metrics`` that some of ``rows`` hold (a grid's ``metrics`` name every task's, e.g.
    ``test/acc1`` and ``test/ppl``; each task logs its own)."""
    return [m for m in metrics if any(r.get(m) not in (None, "") for r in rows)]


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


def seed_offsets(n: int, width: float = 0.25) -> list[float]:
    """Horizontal offsets that spread ``n`` per-seed points over ``width`` (deterministic jitter)."""
    return [0.0] if n == 1 else [width * (i / (n - 1) - 0.5) for i in range(n)]


def draw_seeds(ax: Any, x: float, values: list[float], color: str) -> None:
    """Per-seed points around ``x`` and, right of them, the mean with its 95% t interval
    (n >= 2) or the mean alone, marked ``n = 1``."""
    ax.scatter([x - 0.1 + d for d in seed_offsets(len(values))], values, s=18, color=color, alpha=0.6,
               zorder=3, label="seeds" if x == 0 else None)
    mean, half = mean_ci(values)
    ax.errorbar(x + 0.22, mean, yerr=None if half is None else half, fmt="D", color="black", ms=5,
                capsize=4, zorder=4, label="mean ± 95% CI (t)" if x == 0 else None)
    ax.annotate(f"n = {len(values)}", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                textcoords="offset points", ha="center", fontsize=7, color="0.3")


def plot(spec: AblationSpec, rows: list[dict[str, Any]], path: Path) -> None:
    """Write :func:`plot_figure` to ``path`` (format from the suffix)."""
    from ..analysis.figures import save_figure

    save_figure(plot_figure(spec, rows), path, dpi=110)


def plot_figure(spec: AblationSpec, rows: list[dict[str, Any]]) -> Figure:
    """Per task, top: the primary test metric of every seed (points) and its mean with a 95%
    Student-t confidence interval per normalizer (``n = 1``: the mean alone), on a y-range
    fitted to the values (a log axis for perplexity); bottom: its validation curve per
    normalizer (mean over seeds)."""
    from ..analysis.figures import new_figure

    tasks = list(dict.fromkeys(r["config"] for r in rows))
    normalizers = [n for n in spec.overlays if any(r["normalizer"] == n for r in rows)]
    fig = new_figure(max(5.5, 1.1 * len(normalizers) + 2.5) * len(tasks), 7.5)
    axes = fig.subplots(2, len(tasks), squeeze=False)
    colors = {n: f"C{i}" for i, n in enumerate(normalizers)}
    for j, config in enumerate(tasks):
        task_rows = [r for r in rows if r["config"] == config]
        metric = primary_metric(logged_metrics(table_metrics(spec, task_rows), task_rows))
        points, curves = axes[0][j], axes[1][j]
        if metric is None:
            continue
        val_metric = "val/" + metric.split("/", 1)[-1]
        plotted: list[float] = []
        for i, n in enumerate(normalizers):
            values = [float(r[metric]) for r in task_rows if r["normalizer"] == n and metric in r
                      and not math.isnan(float(r[metric]))]
            if values:
                draw_seeds(points, i, values, colors[n])
                plotted += values
            runs = [_val_curve(spec.root / "cells" / r["id"], val_metric)
                    for r in task_rows if r["normalizer"] == n]
            runs = [c for c in runs if c]
            if runs:
                steps = sorted(set.intersection(*(set(s for s, _ in c) for c in runs)))
                means = [statistics.fmean(dict(c)[s] for c in runs) for s in steps]
                curves.plot(steps, means, marker=".", color=colors[n], label=f"{n} (n = {len(runs)})")
        if log_scaled(metric) and plotted and min(plotted) > 0:
            points.set_yscale("log")
            curves.set_yscale("log")
        points.set_xticks(range(len(normalizers)), normalizers, rotation=20)
        points.set_xlim(-0.6, len(normalizers) - 0.3)
        points.margins(y=0.15)
        points.set_ylabel(f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)")
        points.set_title(f"{Path(config).stem}: {metric}", fontsize=10)
        points.grid(axis="y", alpha=0.3)
        if points.collections:
            points.legend(fontsize=7, loc="best")
        curves.set_title(f"validation {metric.split('/', 1)[-1]} (mean over seeds)", fontsize=10)
        curves.set_xlabel("step")
        curves.set_ylabel(val_metric)
        curves.grid(alpha=0.3)
        if curves.lines:
            curves.legend(fontsize=7)
    return fig


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
