"""The words of ``docs/results.md``: tables and verdicts built from the grid's numbers
(used by ``tools/results_page.py``; no number here is typed by hand)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmkit.ablation.report import lower_is_better
from mmkit.ablation.statistics import fmt, interval_text, paired_differences, per_normalizer

# The paper's reported gains of MultiMax over softmax, per kind of task (DESIGN.md)
PAPER = {"ImageClassification": "+0.006 top-1 accuracy (0.6 points) on ImageNet-1k (DeiT-small, "
                                "global average pooling)",
         "LanguageModeling": "−0.7 perplexity on WikiText-103 (Transformer-XL)",
         "Translation": "+0.3 BLEU on IWSLT'14 De→En"}


def paired_table(rows: list[dict[str, Any]], task: str, metrics: dict[str, str],
                 normalizers: list[str]) -> str:
    """Markdown: per measure and normalizer the paired difference to softmax, its 95% t
    interval (* where it excludes 0) and the number of pairs."""
    lines = ["| measure | normalizer | Δ vs softmax [95% CI] | pairs |", "|---|---|---|---|"]
    for metric, name in metrics.items():
        diffs = paired_differences(rows, task, metric)
        for n in (n for n in normalizers if n in diffs):
            mark = " *" if diffs[n].excludes_zero() else ""
            lines.append(f"| {name} | {n} | {interval_text(diffs[n], signed=True)}{mark} | {diffs[n].n} |")
    return "\n".join(lines)


def measure_table(rows: list[dict[str, Any]], task: str, metrics: dict[str, str],
                  normalizers: list[str]) -> str:
    lines = ["| normalizer | " + " | ".join(metrics.values()) + " |", "|---|" + "---|" * len(metrics)]
    cells = {m: per_normalizer(rows, task, m) for m in metrics}
    for n in normalizers:
        lines.append(f"| {n} | " + " | ".join(interval_text(cells[m][n]) if n in cells[m] else "–"
                                               for m in metrics) + " |")
    return "\n".join(lines)


@dataclass
class LastTwo:
    """One task and normalizer: the last two validation steps every seed has, and each
    seed's value there."""

    steps: tuple[float, float]
    before: list[float]
    after: list[float]

    @property
    def changes(self) -> list[float]:
        return [a - b for a, b in zip(self.after, self.before)]

    def finite(self) -> bool:
        return all(math.isfinite(v) for v in self.before + self.after)


def convergence_table(last: dict[tuple[str, str], LastTwo]) -> str:
    """Markdown: the two steps, the mean values there, the mean change and the largest change
    of one seed."""
    lines = ["| task | normalizer | steps | validation (mean) | mean change | largest change of a seed "
             "| seeds |", "|---|---|---|---|---|---|---|"]
    for (task, n), v in last.items():
        mean_before, mean_after = sum(v.before) / len(v.before), sum(v.after) / len(v.after)
        largest = max(v.changes, key=abs)
        lines.append(f"| {task} | {n} | {v.steps[0]:.0f} → {v.steps[1]:.0f} | {fmt(mean_before)} → "
                     f"{fmt(mean_after)} | {mean_after - mean_before:+.3g} | {largest:+.3g} "
                     f"| {len(v.after)} |")
    return "\n".join(lines)


STILL_MOVING = 0.05  # a mean change over the last validation interval of 5% of the value or more


def convergence_verdict(rows: list[dict[str, Any]], task: str, metric: str,
                        last: dict[tuple[str, str], LastTwo]) -> str:
    """One line on how settled the runs of ``task`` are at their last validation: still
    moving when a normalizer's mean changed by :data:`STILL_MOVING` of its value or more over
    the last interval, or when one seed changed by more than the comparison can resolve (the
    narrowest paired 95% interval of ``metric``); plateaued otherwise."""
    mine = {n: v for (t, n), v in last.items() if t == task}
    broken = sorted(n for n, v in mine.items() if not v.finite())
    mine = {n: v for n, v in mine.items() if v.finite()}
    head = f"- **{task}, convergence.** "
    tail = f" Non-finite validation values: {', '.join(broken)}." if broken else ""
    if not mine:
        return head + "No normalizer has two finite validations that every seed shares." + tail
    name = metric.split("/")[-1]
    relative = {n: abs(sum(v.changes) / sum(v.after)) if sum(v.after) else math.inf for n, v in mine.items()}
    moving = max(relative, key=relative.get)
    if relative[moving] >= STILL_MOVING:
        return (head + f"Over the last validation interval the mean {name} of {moving} still changed by "
                f"{relative[moving]:.0%} of its value: the normalizers are compared at a fixed training "
                "budget, not at convergence, and more training could change the ranking." + tail)
    who, largest = max(((n, abs(c)) for n, v in mine.items() for c in v.changes), key=lambda x: x[1])
    halves = [d.half for d in paired_differences(rows, task, metric).values() if d.half]
    text = (f"Every normalizer's mean {name} changed by less than {STILL_MOVING:.0%} over the last "
            f"validation interval; one seed's by up to {largest:.3g} ({who})")
    if not halves:
        return head + text + "; there is no paired interval to compare it with." + tail
    resolution = min(halves)
    state = ("less than the narrowest paired 95% interval (±{:.3g}): the runs have plateaued at the "
             "resolution of this comparison" if largest < resolution else
             "more than the narrowest paired 95% interval (±{:.3g}): the ranking could still change with "
             "more training").format(resolution)
    return head + text + ", " + state + "." + tail


def task_kind(config: str) -> str:
    """``ImageClassification``, ``LanguageModeling`` or ``Translation`` from a base config."""
    from mmkit.files import resolve_config

    model = yaml.safe_load(Path(resolve_config(config)).read_text()).get("model") or {}
    return str(model.get("class_path", "")).split(".")[-1]


def judged(summary: Any, lower: bool) -> str:
    """``better``/``worse`` than softmax where the difference's interval excludes 0 (``lower``:
    lower is better), else ``not distinguishable``."""
    if not summary.excludes_zero():
        return "not distinguishable from softmax"
    better = (summary.mean < 0) if lower else (summary.mean > 0)
    return "better than softmax" if better else "worse than softmax"


def conclusion(spec: dict[str, Any], rows: list[dict[str, Any]], tasks: list[str],
               primaries: dict[str, str | None], normalizers: list[str], measures: list[dict[str, Any]],
               vit_task: str, last: dict[tuple[str, str], LastTwo] | None = None,
               notes: list[str] | None = None) -> str:
    """The page's conclusion, from the numbers: per task which paired differences exclude 0,
    MultiMax against softmax next to the paper's gain, and the ViT analyses' verdicts."""
    kinds = {Path(c).stem: task_kind(c) for c in spec["configs"]}
    out = []
    for task in tasks:
        metric = primaries[task]
        if metric is None:
            continue
        diffs = paired_differences(rows, task, metric)
        lower = lower_is_better(metric)
        found = [f"{n} ({interval_text(diffs[n], signed=True)}, {diffs[n].n} pairs: "
                 f"{judged(diffs[n], lower).split(' than')[0]})"
                 for n in normalizers if n in diffs and diffs[n].excludes_zero()]
        line = f"- **{task}, {metric}.** "
        line += ("Intervals that exclude 0: " + "; ".join(found) + "." if found else
                 "No normalizer's paired difference from softmax has a 95% interval that excludes 0.")
        if "multimax" in diffs:
            d = diffs["multimax"]
            width = f"±{d.half:.3g}" if d.half is not None else "unknown (one seed)"
            line += (f" MultiMax − softmax: {interval_text(d, signed=True)} over {d.n} pairs, "
                     f"{judged(d, lower)}; the interval's half-width is {width}.")
            if kinds.get(task) in PAPER:
                line += f" The paper reports {PAPER[kinds[task]]} at full scale."
        missing = [r["id"] for r in rows if Path(r["config"]).stem == task and not _finite(r.get(metric))]
        if missing:
            line += f" Runs without a finite {metric}, left out of the pairs: {', '.join(missing)}."
        out.append(line)
    analyses = (("cos/last", "patch-token similarity after the last block (over-smoothing)", True),
                ("ink/grad-cam", "Grad-CAM mass on the ink", False),
                ("ink/rollout", "rollout mass on the ink", False))
    for metric, what, lower in analyses:
        d = paired_differences(measures, vit_task, metric).get("multimax")
        if d is not None:
            direction = judged(d, lower)
            out.append(f"- **{vit_task}, {what}.** MultiMax − softmax: {interval_text(d, signed=True)}, "
                       f"{direction}.")
    for task in tasks:
        if primaries[task] is not None:
            out.append(convergence_verdict(rows, task, primaries[task], last or {}))
    out += notes or []
    seeds = len({r["seed"] for r in rows})
    comparisons = f"{len(normalizers) - 1} normalizers × {len(tasks)} tasks"
    out.append(f"\nThese are {seeds} seeds of small models trained for minutes on a CPU: an interval that "
               "excludes 0 here is evidence about these recipes at this scale, and an interval that "
               "contains 0 means this grid cannot tell the normalizers apart, not that they are equal. "
               "Neither confirms nor refutes the paper's full-scale gains; the same grid on the paper's "
               "recipes is `configs/ablation/paper.yaml`. The 95% intervals are not corrected for "
               f"the number of comparisons ({comparisons}, and the analyses): "
               "where two normalizers do not differ, about one interval in twenty excludes 0 by chance.")
    return "\n".join(out)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
