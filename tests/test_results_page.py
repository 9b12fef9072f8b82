"""tools/results_page.py and results_text.py: refuses unfinished grids, reads convergence
from the cells' logs, and words its verdicts from the paired intervals (never from a fixed
text)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from mmkit.ablation.grid import AblationSpec

PATH = Path(__file__).parents[1] / "tools" / "results_page.py"


@pytest.fixture(scope="module")
def page():
    spec = importlib.util.spec_from_file_location("results_page", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def words(page):
    return sys.modules["results_text"]  # the page's wording, imported by the page


REPO = Path(__file__).parents[1]


def write_grid(root: Path, states: dict[str, str], rows: int | None = None,
               config: str = str(REPO / "configs/vit/mnist.yaml")) -> None:
    spec = {"configs": [config], "normalizers": ["softmax", "multimax"], "seeds": [0],
            "metrics": ["test/acc1"], "normalizer_dir": str(REPO / "configs/normalizer")}
    root.mkdir(parents=True, exist_ok=True)
    (root / "ablation.yaml").write_text(yaml.safe_dump(spec))
    grid = AblationSpec(**spec, output_dir=str(root.parent), name=root.name)
    for cell in grid.cells():  # what `mmkit ablate` records when a cell starts
        cell.record_definition()
    for cell, state in states.items():
        (root / "cells" / cell / "status.json").write_text(json.dumps({"state": state}))
    lines = ["id,config,normalizer,seed,test/acc1,wall_s,ckpt"]
    for cell in list(states)[:rows]:
        normalizer = cell.split("-")[1]
        lines.append(f"{cell},{config},{normalizer},0,0.9,10,cells/{cell}/checkpoints/last.ckpt")
    (root / "results.csv").write_text("\n".join(lines) + "\n")


def test_an_unfinished_grid_is_refused_with_one_line(page, tmp_path):
    write_grid(tmp_path, {"mnist-softmax-s0": "done", "mnist-multimax-s0": "running"})
    with pytest.raises(SystemExit, match="1 cells are not done .*mnist-multimax-s0"):
        page.read_grid(tmp_path)


def test_a_table_that_lacks_a_cell_is_refused(page, tmp_path):
    write_grid(tmp_path, {"mnist-softmax-s0": "done", "mnist-multimax-s0": "done"}, rows=1)
    with pytest.raises(SystemExit, match="results.csv has 1 rows for 2 done cells of 2"):
        page.read_grid(tmp_path)
    write_grid(tmp_path / "ok", {"mnist-softmax-s0": "done", "mnist-multimax-s0": "done"})
    spec, rows = page.read_grid(tmp_path / "ok")
    assert [r["seed"] for r in rows] == [0, 0] and spec["normalizers"] == ["softmax", "multimax"]


def test_a_cell_without_a_known_wall_time_is_refused(page, tmp_path):
    write_grid(tmp_path, {"mnist-softmax-s0": "done", "mnist-multimax-s0": "done"})
    table = tmp_path / "results.csv"
    table.write_text(table.read_text().replace("multimax,0,0.9,10,", "multimax,0,0.9,nan,"))
    with pytest.raises(SystemExit, match="1 cells have no known wall time .mnist-multimax-s0"):
        page.read_grid(tmp_path)


def test_the_wall_time_says_when_cells_were_resumed(page, tmp_path):
    write_grid(tmp_path, {"mnist-softmax-s0": "done", "mnist-multimax-s0": "done"})
    assert page.resumed_note(tmp_path) == ""
    run = tmp_path / "cells" / "mnist-multimax-s0" / "run"
    run.mkdir()
    for n in (1, 2):
        (run / f"config.resume-{n}.yaml").write_text("{}")
    assert page.resumed_note(tmp_path) == ("; 1 cell was interrupted and resumed, so this includes "
                                           "the time the grid stood stopped")


def test_a_grid_whose_configs_changed_since_it_ran_is_refused(page, tmp_path):
    config = tmp_path / "mnist.yaml"
    config.write_text((REPO / "configs/vit/mnist.yaml").read_text())
    write_grid(tmp_path / "g", {"mnist-softmax-s0": "done", "mnist-multimax-s0": "done"}, config=str(config))
    page.read_grid(tmp_path / "g")  # the same files: read
    config.write_text(config.read_text().replace("max_epochs: 15", "max_epochs: 16"))
    changed = "configs changed since the grid ran.*config file mnist.yaml changed"
    with pytest.raises(SystemExit, match=changed):
        page.read_grid(tmp_path / "g")


def test_convergence_uses_the_last_two_steps_every_seed_shares(page, words, tmp_path):
    curves = {"t-softmax-s0": [(99, 0.5), (199, 0.8), (299, 0.9)],
              "t-softmax-s1": [(99, 0.4), (199, 0.6), (299, 0.7), (399, 0.75)]}  # one more point
    for cell, points in curves.items():
        run = tmp_path / "cells" / cell / "run"
        run.mkdir(parents=True)
        rows = ["epoch,step,train/loss,val/acc1"] + [f"0,{s},1.0," for s, _ in points]
        rows += [f"0,{s},,{v}" for s, v in points]
        (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    rows = [{"id": c, "config": "configs/t.yaml", "normalizer": "softmax", "seed": i}
            for i, c in enumerate(curves)]
    last = page.last_validations(tmp_path, rows, ["t"], {"t": "test/acc1"}, ["softmax", "multimax"])
    assert list(last) == [("t", "softmax")]  # multimax has no cells
    two = last["t", "softmax"]
    assert two.steps == (199, 299) and two.before == [0.8, 0.6] and two.after == [0.9, 0.7]
    # mean 0.7 -> 0.8: a mean change of +0.1, and +0.1 for the largest seed
    row = words.convergence_table(last).splitlines()[2]
    assert row == "| t | softmax | 199 → 299 | 0.7 → 0.8 | +0.1 | +0.1 | 2 |"


def test_convergence_is_judged_by_the_relative_change_and_the_narrowest_paired_interval(words):
    rows = rows_of({"multimax": [0.02, 0.021, 0.019]})  # paired half-width about 0.0025
    steady = words.LastTwo((1, 2), [0.92] * 3, [0.92] * 3)
    cases = ((0.01, "one seed's by up to 0.01 (softmax), more than the narrowest"),
             (0.001, "have plateaued at the resolution"),
             (0.1, "the mean acc1 of softmax still changed by 11% of its value: the normalizers are "
                   "compared at a fixed training budget"))
    for change, verdict in cases:
        last = {("mnist", "softmax"): words.LastTwo((1, 2), [0.9 - change] * 3, [0.9] * 3),
                ("mnist", "multimax"): steady}
        line = words.convergence_verdict(rows, "mnist", "test/acc1", last)
        assert verdict in line, line
    last[("mnist", "sparsemax")] = words.LastTwo((1, 2), [0.5] * 3, [float("nan")] * 3)
    last[("mnist", "softmax")] = steady
    line = words.convergence_verdict(rows, "mnist", "test/acc1", last)
    assert "have plateaued" in line and line.endswith("Non-finite validation values: sparsemax.")


def rows_of(differences: dict[str, list[float]], metric: str = "test/acc1") -> list[dict]:
    rows = []
    for seed in range(len(differences["multimax"])):
        base = 0.9 + 0.01 * seed
        rows.append({"config": "configs/vit/mnist.yaml", "normalizer": "softmax", "seed": seed, metric: base})
        for n, diffs in differences.items():
            rows.append({"config": "configs/vit/mnist.yaml", "normalizer": n, "seed": seed,
                         metric: base + diffs[seed]})
    return rows


def test_the_conclusion_follows_the_intervals(page):
    spec = {"configs": ["configs/vit/mnist.yaml"]}
    primaries = {"mnist": "test/acc1"}
    gain = rows_of({"multimax": [0.020, 0.021, 0.019], "sparsemax": [0.01, -0.02, 0.0]})
    names = ["softmax", "sparsemax", "multimax"]
    text = page.conclusion(spec, gain, ["mnist"], primaries, names, [], "mnist")
    assert "Intervals that exclude 0: multimax (+0.02 [" in text and "better than softmax" in text
    assert "sparsemax (" not in text  # its interval holds 0
    assert "+0.006 top-1 accuracy (0.6 points)" in text  # the paper's gain, in the metric's units
    noise = rows_of({"multimax": [0.02, -0.03, 0.01]})
    text = page.conclusion(spec, noise, ["mnist"], primaries, ["softmax", "multimax"], [], "mnist")
    assert "No normalizer's paired difference" in text and "not distinguishable from softmax" in text
    loss = rows_of({"multimax": [0.5, 0.52, 0.49]}, metric="test/ppl")  # higher perplexity: worse
    text = page.conclusion(spec, loss, ["mnist"], {"mnist": "test/ppl"}, ["softmax", "multimax"], [], "mnist")
    assert "worse than softmax" in text


def test_the_analysis_verdicts_know_which_way_is_better(page):
    spec = {"configs": ["configs/vit/mnist.yaml"]}
    measures = []
    for seed, (cos, ink) in enumerate([(0.10, 0.05), (0.11, 0.04), (0.09, 0.06)]):
        measures.append({"config": "configs/vit/mnist.yaml", "normalizer": "softmax", "seed": seed,
                         "cos/last": 0.5, "ink/grad-cam": 0.3, "ink/rollout": 0.3})
        measures.append({"config": "configs/vit/mnist.yaml", "normalizer": "multimax", "seed": seed,
                         "cos/last": 0.5 - cos, "ink/grad-cam": 0.3 + ink, "ink/rollout": 0.3 - ink})
    text = page.conclusion(spec, [], ["mnist"], {"mnist": None}, ["softmax", "multimax"], measures, "mnist")
    lines = text.splitlines()
    assert "over-smoothing" in lines[0] and "better than softmax" in lines[0]  # less similarity
    assert "Grad-CAM" in lines[1] and "better than softmax" in lines[1]
    assert "rollout" in lines[2] and "worse than softmax" in lines[2]


def test_sparse_lm_outputs_get_the_perplexity_caveat(page, tmp_path):
    rows = []
    for normalizer, output in (("softmax", "softmax"), ("multimax", "multimax"), ("sparsemax", "sparsemax"),
                               ("entmax", {"name": "entmax", "alpha": 1.5})):
        cell = f"kjv-{normalizer}-s0"
        init = {"ppl_epsilon": 1e-6, "network": {"init_args": {"output_normalizer": output}}}
        run = tmp_path / "cells" / cell / "run"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"model": {"init_args": init}}))
        rows.append({"id": cell, "config": "configs/benchmark/kjv.yaml", "normalizer": normalizer, "seed": 0})
    note = page.sparse_perplexity_note(tmp_path, rows, "kjv")
    assert note.startswith("- **kjv, perplexity of sparse outputs.** sparsemax, entmax give many targets")
    assert "ε = 1e-06, 13.8 nats" in note
    assert page.sparse_perplexity_note(tmp_path, rows[:2], "kjv") is None  # full support only
    cell = tmp_path / "cells" / "mnist-sparsemax-s0" / "run"
    cell.mkdir(parents=True)
    (cell / "config.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"network": {}}}}))
    vit = [{"id": "mnist-sparsemax-s0", "config": "configs/vit/mnist.yaml", "normalizer": "sparsemax",
            "seed": 0}]
    assert page.sparse_perplexity_note(tmp_path, vit, "mnist") is None  # not a language model


def test_missing_values_are_named_not_dropped(page, words):
    rows = rows_of({"multimax": [0.02, 0.021, 0.019]})
    rows[-1]["test/acc1"] = float("nan")  # multimax seed 2 diverged
    rows[-1]["id"] = "mnist-multimax-s2"
    spec = {"configs": ["configs/vit/mnist.yaml"]}
    names = ["softmax", "multimax"]
    text = page.conclusion(spec, rows, ["mnist"], {"mnist": "test/acc1"}, names, [], "mnist")
    assert "over 2 pairs" in text and "left out of the pairs: mnist-multimax-s2" in text
    vit = "configs/vit/mnist.yaml"
    measures = [{"config": vit, "normalizer": "softmax", "seed": 0, "ink": 0.3},
                {"config": vit, "normalizer": "multimax", "seed": 0, "ink": float("nan")}]
    table = words.measure_table(measures, "mnist", {"ink": "ink share"}, ["softmax", "multimax"])
    assert table.splitlines()[-1] == "| multimax | – |"
