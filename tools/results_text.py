"""The words of ``docs/results.md``: tables and verdicts built from the grid's numbers
(used by ``tools/results_page.py``; no number here is typed by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmkit.ablation.report import lower_is_better
from mmkit.ablation.statistics import interval_text, paired_differences, per_normalizer

# The paper's reported gains of MultiMax over softmax, per kind of task (DESIGN.md)
PAPER = {"ImageClassification": "+0.6 points of ImageNet-1k top-1 accuracy (DeiT-small, global "
                                "average pooling)",
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
        lines.append(f"| {n} | " + " | ".join(interval_text(cells[m][n]) for m in metrics) + " |")
    return "\n".join(lines)


def convergence_table(last: dict[tuple[str, str], tuple[float, float, float, float]]) -> str:
    """Markdown of :func:`last_validations` with the change between the two."""
    lines = ["| task | normalizer | steps | validation | last change |", "|---|---|---|---|---|"]
    for (task, n), (s0, s1, before, after) in last.items():
        lines.append(f"| {task} | {n} | {s0:.0f} → {s1:.0f} | {fmt(before)} → {fmt(after)} | "
                     f"{after - before:+.3g} |")
    return "\n".join(lines)


NEAR = 0.01  # a last validation interval that changed the metric by less than 1% of it: near convergence


def convergence_verdict(task: str, metric: str,
                        last: dict[tuple[str, str], tuple[float, float, float, float]]) -> str:
    """One line: the largest relative change of the last validation interval over the
    normalizers (mean over seeds), and whether it is under :data:`NEAR`."""
    changes = {n: (after - before) / abs(after) for (t, n), (_, _, before, after) in last.items()
               if t == task and after != 0}
    if not changes:
        return f"- **{task}, convergence.** No validation curve with two nonzero points."
    worst = max(changes, key=lambda n: abs(changes[n]))
    state = ("under 1% for every normalizer: near convergence at this budget" if abs(changes[worst]) < NEAR
             else "1% or more: the comparison is at a fixed training budget, not at convergence")
    return (f"- **{task}, convergence.** Over the last validation interval {metric.split('/')[-1]} changed "
            f"by at most {abs(changes[worst]):.1%} of its value ({worst}, mean over seeds): {state}.")


def fmt(value: float) -> str:
    return f"{value:.4g}"


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
               vit_task: str, last: dict[tuple[str, str], tuple[float, float, float, float]] | None = None,
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
        found = [f"{n} ({interval_text(diffs[n], signed=True)}: {judged(diffs[n], lower).split(' than')[0]})"
                 for n in normalizers if n in diffs and diffs[n].excludes_zero()]
        line = f"- **{task}, {metric}.** "
        line += ("Intervals that exclude 0: " + "; ".join(found) + "." if found else
                 "No normalizer's paired difference from softmax has a 95% interval that excludes 0.")
        if "multimax" in diffs:
            d = diffs["multimax"]
            width = f"±{d.half:.3g}" if d.half is not None else "unknown (one seed)"
            line += (f" MultiMax − softmax: {interval_text(d, signed=True)}, {judged(d, lower)}; "
                     f"the interval's half-width is {width}.")
            if kinds.get(task) in PAPER:
                line += f" The paper reports {PAPER[kinds[task]]} at full scale."
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
            out.append(convergence_verdict(task, primaries[task], last or {}))
    out += notes or []
    seeds = len({r["seed"] for r in rows})
    comparisons = f"{len(normalizers) - 1} normalizers × {len(tasks)} tasks"
    out.append(f"\nThese are {seeds} seeds of small models trained for minutes on a CPU: an interval that "
               "excludes 0 here is evidence about these recipes at this scale, and an interval that "
               "contains 0 means this grid cannot tell the normalizers apart, not that they are equal. "
               "Neither confirms nor refutes the paper's full-scale gains; the same grid on the paper's "
               "recipes is `configs/ablation/paper.yaml`. The 95% intervals are not corrected for "
               f"the number of comparisons ({comparisons}, and the analyses): "
               "about one in twenty intervals excludes 0 by chance alone.")
    return "\n".join(out)
