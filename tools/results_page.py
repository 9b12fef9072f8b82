"""Write ``docs/results.md`` and ``docs/results/`` from a finished benchmark grid.

    mmkit ablate -c configs/ablation/benchmark.yaml        # the grid: 45 cells
    python tools/results_page.py runs/ablation/benchmark    # this page, from its outputs

The page holds the grid's table (mean ± std, 95% t intervals, paired differences with
softmax, time ratios), how far each run was from convergence, and the three analyses run
on the grid's tested checkpoints: per-layer S, M, entropy and exact zeros (every task),
over-smoothing and localisation (the ViT). Figures use seed 0; the analysis numbers cover
every seed, with the same statistics as the grid's table. Nothing on the page is typed
by hand: a grid with unfinished cells is refused.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from mmkit.ablation.grid import AblationSpec
from mmkit.ablation.report import _val_curve, logged_metrics, primary_metric
from mmkit.analysis.checkpoints import load_vit
from mmkit.analysis.localisation import grad_cam, ink_mask, ink_share, rollout_of
from mmkit.analysis.oversmoothing import oversmoothing_curve
from mmkit.cli.figure_inputs import image_batch
from mmkit.files import resolve_config
from mmkit.normalizers import make_normalizer

sys.path.insert(0, str(Path(__file__).parent))  # run as a script or loaded by the tests
from results_text import (  # noqa: E402
    LastTwo,
    conclusion,
    convergence_table,
    measure_table,
    paired_table,
    task_kind,
)


def refuse(message: str) -> None:
    raise SystemExit(f"results_page: {message}")


def read_grid(root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid's resolved spec and its ``results.csv`` rows; refuses a grid with any cell
    not done, whose table lacks one of its cells, or whose cells were run with other configs,
    overlays or args than the files the page would name."""
    spec_path, csv_path = root / "ablation.yaml", root / "results.csv"
    if not spec_path.is_file() or not csv_path.is_file():
        refuse(f"{root} is not a finished ablation grid (no ablation.yaml or results.csv)")
    spec = yaml.safe_load(spec_path.read_text())
    cells = sorted(p.parent.name for p in (root / "cells").glob("*/status.json"))
    unfinished = [c for c in cells if json.loads((root / "cells" / c / "status.json").read_text())
                  .get("state") != "done"]
    if unfinished:
        refuse(f"{len(unfinished)} cells are not done ({', '.join(unfinished[:3])}...); rerun the grid")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = len(spec["configs"]) * len(spec["normalizers"]) * len(spec["seeds"])
    if len(rows) != expected or sorted(r["id"] for r in rows) != cells:
        refuse(f"results.csv has {len(rows)} rows for {len(cells)} done cells of {expected}; "
               "rerun `mmkit ablate` on the grid to rewrite it")
    grid = AblationSpec(**{**spec, "output_dir": str(root.parent), "name": root.name})
    try:  # every cell's recorded config and overlay (SHA-256), seed and args against today's files
        grid.conflicts()
    except ValueError as err:
        refuse(f"the configs changed since the grid ran, so its numbers are not theirs: {err}")
    untimed = [r["id"] for r in rows if not math.isfinite(float(r["wall_s"] or "nan"))]
    if untimed:
        refuse(f"{len(untimed)} cells have no known wall time ({', '.join(untimed[:3])}: an earlier "
               "attempt did not record its start), so the page's time ratios would not hold; "
               "delete their cells/<id> folders and rerun `mmkit ablate` to time them")
    for row in rows:
        row["seed"] = int(row["seed"])
    return spec, rows


def grid_wall(root: Path) -> float:
    """Seconds from the first cell's start (its definition.json) to the last result."""
    starts = [p.stat().st_mtime for p in (root / "cells").glob("*/definition.json")]
    ends = [p.stat().st_mtime for p in (root / "cells").glob("*/result.json")]
    return max(ends) - min(starts)


def resumed_note(root: Path) -> str:
    """Words for the wall time of a grid some of whose cells were interrupted and resumed (their
    run folders hold a ``config.resume-*.yaml``): it includes the time the grid stood stopped."""
    n = len({p.parent.parent.name for p in (root / "cells").glob("*/run/config.resume-*.yaml")})
    if not n:
        return ""
    return (f"; {n} cell{'s were' if n > 1 else ' was'} interrupted and resumed, so this includes "
            "the time the grid stood stopped")


def mmkit_figures(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mmkit", "figures", *args], check=True,
                   stdout=subprocess.DEVNULL)


def sparse_perplexity_note(root: Path, rows: list[dict[str, Any]], task: str) -> str | None:
    """A line for an LM task whose output normalizers include sparse ones (from the cells'
    saved configs): their perplexity scores a zero-probability target at −log ε."""
    sparse, eps = [], None
    for row in (r for r in rows if Path(r["config"]).stem == task and r["seed"] == rows[0]["seed"]):
        saved = yaml.safe_load((root / "cells" / row["id"] / "run" / "config.yaml").read_text())
        init = saved["model"]["init_args"]
        if "ppl_epsilon" not in init:
            return None  # not a language model
        eps = float(init["ppl_epsilon"])
        if not make_normalizer(init["network"]["init_args"]["output_normalizer"]).modulated_softmax():
            sparse.append(row["normalizer"])
    if not sparse or eps is None:
        return None
    return (f"- **{task}, perplexity of sparse outputs.** {', '.join(sparse)} give many targets "
            f"probability exactly 0 at the output, and their perplexity scores such a target at −log ε "
            f"(ε = {eps:g}, {-math.log(eps):.1f} nats). Their perplexity therefore counts how often the "
            "target falls outside the support more than it measures the likelihood, and their difference "
            "from softmax is not a like-for-like perplexity comparison. Softmax and MultiMax give every "
            "token a positive probability.")


def tested(root: Path, rows: list[dict[str, Any]], task: str, seed: int | None = None) -> list[str]:
    """The tested checkpoints of ``task`` (one seed, or all), normalizers in the grid's order."""
    return [str(root / r["ckpt"]) for r in rows
            if Path(r["config"]).stem == task and (seed is None or r["seed"] == seed)]


def vit_measures(root: Path, rows: list[dict[str, Any]], task: str, num: int) -> list[dict[str, Any]]:
    """Per ViT cell: the mean patch-token cosine after the last block and over all blocks,
    and the Grad-CAM and rollout mass on the ink, over the first ``num`` test images."""
    out = []
    for row in (r for r in rows if Path(r["config"]).stem == task):
        ckpt = str(root / row["ckpt"])
        model = load_vit(ckpt, None)
        images, _, _ = image_batch(ckpt, None, model, list(range(num)))
        curve = oversmoothing_curve(model, images)
        measures = {"cos/last": float(curve[-1]), "cos/mean": float(curve.mean())}
        for name, fn in (("ink/grad-cam", grad_cam), ("ink/rollout", rollout_of)):
            maps = fn(model, images)[0]
            shares = torch.tensor([ink_share(m, x) for m, x in zip(maps, images)])
            measures[name] = float(shares.nanmean())
        measures["ink/pixels"] = float(sum(float(ink_mask(x).float().mean()) for x in images) / num)
        out.append({"config": row["config"], "normalizer": row["normalizer"], "seed": row["seed"],
                    **measures})
    return out


def write_page(root: Path, out: Path, num: int, indices: list[int]) -> None:
    spec, rows = read_grid(root)
    assets = out.parent / out.stem
    assets.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "results.md", "results.png"):
        shutil.copyfile(root / name, assets / ("grid_" + name.split("_")[-1]))
    normalizers = [Path(n).stem for n in spec["normalizers"]]
    if "softmax" not in normalizers:
        refuse("the page compares every normalizer with softmax, and the grid has no softmax runs")
    tasks = list(dict.fromkeys(Path(c).stem for c in spec["configs"]))
    kinds = {Path(c).stem: task_kind(c) for c in spec["configs"]}
    vit_task = next((t for t in tasks if kinds[t] == "ImageClassification"), None)
    if vit_task is None:
        refuse("the page's over-smoothing and localisation analyses need an image-classification task")
    first = int(spec["seeds"][0])  # the seed of the figures

    for task in tasks:  # per-layer statistics
        mmkit_figures("layers", "--ckpt", *tested(root, rows, task, first),
                      "--out", str(assets / f"layers_{task}.png"))
    shown = tested(root, rows, vit_task, first)
    mmkit_figures("oversmoothing", "--ckpt", *shown, "--num", str(num),
                  "--out", str(assets / "oversmoothing.png"))
    mmkit_figures("localisation", "--ckpt", *shown, "--num", str(num), "--test_index", *map(str, indices),
                  "--out", str(assets / "localisation.png"))

    measures = vit_measures(root, rows, vit_task, num)
    names = {"cos/last": "cosine after the last block ↓", "cos/mean": "cosine, mean over blocks ↓",
             "ink/grad-cam": "Grad-CAM mass on ink ↑", "ink/rollout": "rollout mass on ink ↑"}
    ink_pixels = sum(m["ink/pixels"] for m in measures) / len(measures)
    analysis = measure_table(measures, vit_task, names, normalizers)
    paired = paired_table(measures, vit_task, names, normalizers)
    write_csv(assets / "vit_measures.csv", measures)

    metrics = spec.get("metrics") or sorted({k for r in rows for k in r if k.startswith("test/")})
    primaries = {t: primary_metric(logged_metrics(metrics, [r for r in rows if Path(r["config"]).stem == t]))
                 for t in tasks}
    wall, cell_sum = grid_wall(root), sum(float(r["wall_s"]) for r in rows)
    last = last_validations(root, rows, tasks, primaries, normalizers)
    walls: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        walls.setdefault((r["config"], r["normalizer"]), []).append(float(r["wall_s"]))
    wall_spread = max((max(w) - min(w)) / (sum(w) / len(w)) for w in walls.values())
    template = (Path(__file__).parent / "results_template.md").read_text()
    command, recipes = recipes_text(spec, root)
    text = template.format(
        title=f"{len(normalizers)} normalizers on {len(tasks)} small tasks",
        command=command, recipes=recipes, grid_dir=root.as_posix(),
        cells=len(rows), jobs=spec.get("jobs", 1),
        shape=f"{len(tasks)} tasks × {len(normalizers)} normalizers × {len(spec['seeds'])} seeds",
        wall=wall / 60, resumed=resumed_note(root), cell_sum=cell_sum / 60, wall_spread=wall_spread,
        machine=f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}",
        grid_table=(root / "results.md").read_text().strip(),
        convergence=convergence_table(last),
        layers="\n\n".join(layer_section(assets, t) for t in tasks),
        analysis=analysis, paired=paired, num=num, ink_pixels=ink_pixels, assets=assets.name, seed=first,
        conclusion=conclusion(spec, rows, tasks, primaries, normalizers, measures, vit_task, last,
                              notes=[n for t in tasks if (n := sparse_perplexity_note(root, rows, t))]),
    )
    out.write_text(text)


def layer_section(assets: Path, task: str) -> str:
    table = (assets / f"layers_{task}.md").read_text().strip()
    sigma = sorted(p.name for p in assets.glob(f"layers_{task}_sigma*.png"))
    figs = "".join(f"\n\n![learned σ of MultiMax, {task}]({assets.name}/{s})" for s in sigma)
    return f"### {task}\n\n![per-layer statistics, {task}]({assets.name}/layers_{task}.png)\n\n{table}{figs}"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: f"{v:.5f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)


def last_validations(root: Path, rows: list[dict[str, Any]], tasks: list[str],
                     primaries: dict[str, str | None], normalizers: list[str]
                     ) -> dict[tuple[str, str], LastTwo]:
    """Per (task, normalizer): the last two validation steps of the primary metric that every
    seed's curve has, with each seed's values there (left out: no two shared steps)."""
    out = {}
    for task in tasks:
        metric = primaries[task]
        if metric is None:
            continue
        val = "val/" + metric.split("/", 1)[-1]
        for n in normalizers:
            curves = [dict(_val_curve(root / "cells" / r["id"], val)) for r in rows
                      if Path(r["config"]).stem == task and r["normalizer"] == n]
            shared = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if len(shared) >= 2:
                s0, s1 = shared[-2:]
                out[task, n] = LastTwo((s0, s1), [c[s0] for c in curves], [c[s1] for c in curves])
    return out


def recipes_text(spec: dict[str, Any], root: Path) -> tuple[str, str]:
    """The command that reproduces the grid and the paragraph on its recipes: the shipped
    benchmark's when the grid is it (same configs, normalizers, seeds, args), else the grid's
    own file and its settings."""
    shipped = yaml.safe_load(Path(resolve_config("configs/ablation/benchmark.yaml")).read_text())
    defaults = {"normalizers": None, "seeds": None, "args": [], "test_ckpt": "best"}
    same = ([Path(c).as_posix() for c in spec["configs"]] == shipped["configs"]
            and all((spec.get(k) or default) == shipped.get(k, default) for k, default in defaults.items()))
    args = ", ".join(f"`{a}`" for a in spec.get("args") or []) or "none"
    if same:
        return "mmkit ablate -c configs/ablation/benchmark.yaml", BENCHMARK_RECIPES
    configs = ", ".join(f"`{c}`" for c in spec["configs"])
    return (f"mmkit ablate -c {root / 'ablation.yaml'}",
            f"This grid is not the shipped `configs/ablation/benchmark.yaml`. Its base configs: {configs}; "
            f"its extra arguments for every cell: {args}. The recipe of each task is the same for every "
            "normalizer; only the normalizer overlay differs.")


BENCHMARK_RECIPES = """The recipe of each task is fixed and the same for every normalizer; only the normalizer
overlay differs (`configs/normalizer/*.yaml`), and the grid adds no arguments. The ViT runs
`configs/vit/mnist.yaml` unchanged; the LM and the translator run the CPU-budget versions in
`configs/benchmark/`, the translator with the MultiMax reference placement (softmax in
cross-attention and while generating)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", nargs="?", default="runs/ablation/benchmark", help="the grid's folder")
    parser.add_argument("--out", default="docs/results.md", help="the page (figures in its stem folder)")
    parser.add_argument("--num", type=int, default=100, help="test images for the ViT analyses")
    parser.add_argument("--test_index", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="test images drawn in the localisation figure")
    args = parser.parse_args(argv)
    write_page(Path(args.grid), Path(args.out), args.num, args.test_index)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('')}/")


if __name__ == "__main__":
    main()
