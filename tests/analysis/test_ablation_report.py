"""The ablation report's statistics (mean, std, t interval), its plot (per-seed points, mean
with a 95% t interval or "n = 1", a y-range fitted to the values) and results.csv's
relative checkpoint paths."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer

from mmkit.ablation import AblationSpec
from mmkit.ablation.report import plot_figure, relative_path, write_reports
from mmkit.analysis.summary import mean_ci, mean_std, t_cdf, t_quantile

REPO = Path(__file__).resolve().parents[2]
ACC = {"softmax": [0.91, 0.93, 0.92], "multimax": [0.95, 0.94], "sparsemax": [0.9]}


@pytest.mark.parametrize(("q", "df", "expected"), [(0.975, 1, 12.7062), (0.975, 2, 4.3027),
                                                   (0.975, 4, 2.7764), (0.975, 30, 2.0423),
                                                   (0.95, 5, 2.0150), (0.995, 10, 3.1693)])
def test_t_quantile_matches_tables(q, df, expected):
    assert t_quantile(q, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(1 - q, df) == pytest.approx(-expected, abs=1e-4)
    assert t_cdf(expected, df) == pytest.approx(q, abs=1e-5)


def test_mean_std_and_ci():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert mean_ci([5.0]) == (5.0, None) and mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="no values"):
        mean_std([])
    with pytest.raises(ValueError, match="0 < q < 1"):
        t_quantile(1.5, 3)


@pytest.fixture
def grid(tmp_path):
    spec = AblationSpec(configs=[str(REPO / "configs/vit/mnist.yaml")], normalizers=list(ACC),
                        seeds=[0, 1, 2], name="g", output_dir=str(tmp_path / "out"),
                        normalizer_dir=str(REPO / "configs/normalizer"))
    rows = []
    for n, values in ACC.items():
        for seed, acc in enumerate(values):
            cell = spec.root / "cells" / f"mnist-{n}-s{seed}"
            (cell / "checkpoints").mkdir(parents=True)
            (cell / "checkpoints" / "last.ckpt").write_bytes(b"x")
            (cell / "run").mkdir()
            (cell / "run" / "metrics.csv").write_text(f"step,val/acc1\n10,{acc - 0.1}\n20,{acc}\n")
            rows.append({"id": cell.name, "config": spec.configs[0], "normalizer": n, "seed": seed,
                         "test/acc1": acc, "wall_s": 1.0, "ckpt": str(cell / "checkpoints" / "last.ckpt")})
    return spec, rows


def test_plot_shows_seeds_ci_and_n1(grid):
    spec, rows = grid
    fig = plot_figure(spec, rows)
    top = fig.axes[0]
    seeds = [c for c in top.collections if isinstance(c, PathCollection)]
    assert sorted(len(c.get_offsets()) for c in seeds) == [1, 2, 3]  # one point per seed
    assert sorted(float(y) for c in seeds for y in c.get_offsets()[:, 1]) == sorted(
        v for vs in ACC.values() for v in vs)
    bars = [c for c in top.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 3
    halves = []
    for bar in bars:
        (mean,) = bar.lines[0].get_ydata()
        segments = bar.lines[2][0].get_segments() if bar.lines[2] else []
        halves.append((round(float(mean), 6), [round(float(s[1][1] - s[0][1]) / 2, 6) for s in segments]))
    expected = {round(mean_ci(v)[0], 6): mean_ci(v)[1] for v in ACC.values()}
    for mean, half in halves:
        assert (half[0] == pytest.approx(expected[mean], abs=1e-6)) if half else expected[mean] is None
    assert expected[0.9] is None and any(t.get_text() == "n = 1" for t in top.texts)
    low, high = top.get_ylim()
    assert 0.8 < low < 0.9 and high < 1.1  # fitted to the values, not from 0
    assert top.get_ylabel().startswith("test/acc1") and fig.axes[1].get_xlabel() == "step"
    assert len(fig.axes[1].lines) == 3


def test_each_task_plots_its_own_metric(grid):
    # a grid's `metrics` name every task's metric; the LM's panel must show its perplexity,
    # not an empty test/acc1 panel
    spec, rows = grid
    lm = str(REPO / "configs/lm/kjv.yaml")
    spec = AblationSpec(configs=[spec.configs[0], lm], normalizers=spec.normalizers, seeds=spec.seeds,
                        name="g", output_dir=spec.output_dir, normalizer_dir=spec.normalizer_dir,
                        metrics=["test/acc1", "test/ppl"])
    rows = rows + [{"id": f"kjv-{r['normalizer']}-s{r['seed']}", "config": lm, "normalizer": r["normalizer"],
                    "seed": r["seed"], "test/ppl": 100 + 10 * r["test/acc1"], "wall_s": 1.0} for r in rows]
    fig = plot_figure(spec, rows)
    top_lm = fig.axes[1]
    assert top_lm.get_ylabel().startswith("test/ppl (lower is better)")
    points = sorted(float(y) for c in top_lm.collections if isinstance(c, PathCollection)
                    for y in c.get_offsets()[:, 1])
    assert points == sorted(100 + 10 * v for vs in ACC.values() for v in vs)
    assert fig.axes[0].get_ylabel().startswith("test/acc1")
    # perplexity on a log axis (top and validation curves), accuracy on a linear one
    assert (top_lm.get_yscale(), fig.axes[3].get_yscale()) == ("log", "log")
    assert (fig.axes[0].get_yscale(), fig.axes[2].get_yscale()) == ("linear", "linear")


def test_results_csv_paths_are_relative(grid, tmp_path):
    spec, rows = grid
    paths = write_reports(spec, rows)
    with open(paths["csv"], newline="") as f:
        written = list(csv.DictReader(f))
    for row in written:
        assert not Path(row["ckpt"]).is_absolute() and row["ckpt"].startswith("cells/")
        assert (spec.root / row["ckpt"]).is_file()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows[0]["ckpt"].startswith("/")  # the rows themselves are left as they were
    assert relative_path("/elsewhere/x.ckpt", spec.root) == "/elsewhere/x.ckpt"
    assert relative_path("cells/x.ckpt", spec.root) == "cells/x.ckpt"
