"""``mmkit ablate``: outputs, skipping and retrying, failures, SLURM dry run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmkit.ablation import AblationSpec
from mmkit.ablation.report import summary_table
from mmkit.entry import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2", "--trainer.log_every_n_steps=1",
        "--model.init_args.network.init_args.preset=test", "--data.init_args.batch_size=16"]


def grid_yaml(tmp_path: Path, normalizers: list[str], seeds: list[int], args=TINY, **extra) -> Path:
    spec = {"name": "tiny", "output_dir": str(tmp_path / "out"),
            "configs": [str(REPO / "configs/vit/mnist.yaml")], "normalizers": normalizers,
            "seeds": seeds, "normalizer_dir": str(REPO / "configs/normalizer"),
            "args": [*args, "--trainer.enable_progress_bar=false"], **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(spec))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_grid_writes_csv_table_and_plot(tmp_path, capsys):
    assert main(["ablate", "-c", str(grid_yaml(tmp_path, ["softmax", "multimax"], [0, 1]))]) == 0
    root = tmp_path / "out" / "tiny"
    rows = read_rows(root / "results.csv")
    assert sorted((r["normalizer"], r["seed"]) for r in rows) == [
        ("multimax", "0"), ("multimax", "1"), ("softmax", "0"), ("softmax", "1")]
    for row in rows:
        assert 0.0 <= float(row["test/acc1"]) <= 1.0 and float(row["wall_s"]) > 0
        assert not Path(row["ckpt"]).is_absolute() and (root / row["ckpt"]).is_file()  # relative to the grid
        assert row["config"].endswith("mnist.yaml")
    # the table's mean ± std is the mean and std of the CSV rows
    table = (root / "results.md").read_text()
    soft = [float(r["test/acc1"]) for r in rows if r["normalizer"] == "softmax"]
    mean = sum(soft) / 2
    std = abs(soft[0] - soft[1]) / 2 ** 0.5
    assert f"{mean:.4g} ± {std:.4g}" in table.splitlines()[2]
    assert table.count("**") >= 2  # a best entry per column
    png = root / "results.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    out = capsys.readouterr().out
    assert "results.csv" in out and "| softmax |" in out and "[4/4]" in out


def test_rerun_skips_done_cells_and_retries_a_killed_one(tmp_path):
    """SIGKILL the grid while its second cell runs; the rerun keeps the first cell's
    result untouched and runs the second one again."""
    cfg = grid_yaml(tmp_path, ["softmax", "multimax"], [0],
                    args=[a.replace("max_epochs=1", "max_epochs=3") for a in TINY])
    cells = tmp_path / "out" / "tiny" / "cells"
    proc = subprocess.Popen([sys.executable, "-m", "mmkit", "ablate", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    status = cells / "mnist-multimax-s0" / "status.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if status.is_file() and json.loads(status.read_text())["state"] == "running":
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the grid finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = cells / "mnist-softmax-s0" / "result.json"
    kept = first.read_text()
    assert json.loads(status.read_text())["state"] == "running"  # killed mid-cell
    assert not (cells / "mnist-multimax-s0" / "result.json").exists()

    done = subprocess.run([sys.executable, "-m", "mmkit", "ablate", "-c", str(cfg)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 done" in done.stdout and "1 to run" in done.stdout
    assert first.read_text() == kept
    assert json.loads(status.read_text())["state"] == "done"
    assert len(read_rows(tmp_path / "out" / "tiny" / "results.csv")) == 2


def test_a_failing_cell_keeps_the_others_and_is_retried(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"  # fails when the model is built, after the grid started
    bad.write_text("model:\n  init_args:\n    network:\n      init_args:\n"
                   "        normalizer: {name: multimax, order: 0}\n")
    cfg = grid_yaml(tmp_path, ["softmax", str(bad)], [0])
    assert main(["ablate", "-c", str(cfg)]) == 1
    root = tmp_path / "out" / "tiny"
    assert [r["normalizer"] for r in read_rows(root / "results.csv")] == ["softmax"]
    status = json.loads((root / "cells" / "mnist-broken-s0" / "status.json").read_text())
    assert status["state"] == "failed" and "order must be >= 1" in status["error"]
    assert "failed mnist-broken-s0" in " ".join(capsys.readouterr().out.split())
    done_before = (root / "cells" / "mnist-softmax-s0" / "result.json").stat().st_mtime_ns
    assert main(["ablate", "-c", str(cfg)]) == 1  # retried (and fails again); softmax skipped
    assert "1 done" in capsys.readouterr().out
    assert (root / "cells" / "mnist-softmax-s0" / "result.json").stat().st_mtime_ns == done_before


def test_slurm_dry_run_prints_sbatch_and_writes_the_array_script(tmp_path, capsys):
    cfg = grid_yaml(tmp_path, ["softmax", "sparsemax", "multimax"], [0, 1])
    assert main(["ablate", "-c", str(cfg), "--slurm=true", "--dry_run=true",
                 "--sbatch=[--gres=gpu:1,--time=01:00:00]"]) == 0
    script = tmp_path / "out" / "tiny" / "slurm" / "array.sbatch"
    assert f"would run: sbatch {script}" in " ".join(capsys.readouterr().out.split())
    text = script.read_text()
    assert "#SBATCH --array=0,1,2,3,4,5" in text and "#SBATCH --gres=gpu:1" in text
    assert '--cell "$SLURM_ARRAY_TASK_ID"' in text and "ablation.yaml" in text
    assert not (tmp_path / "out" / "tiny" / "cells").exists()  # nothing ran


def test_cell_option_runs_one_cell(tmp_path):
    cfg = grid_yaml(tmp_path, ["softmax", "multimax"], [0])
    assert main(["ablate", "-c", str(cfg), "--cell=1"]) == 0
    cells = tmp_path / "out" / "tiny" / "cells"
    assert json.loads((cells / "mnist-multimax-s0" / "status.json").read_text())["state"] == "done"
    assert not (cells / "mnist-softmax-s0").exists()


@pytest.mark.parametrize("args, message", [
    (["--normalizers=[softmax,nosuchmax]"], "no normalizer overlay"),
    (["--configs=[missing.yaml]"], "does not exist"),
    (["--seeds=[]"], "at least one entry"),
    (["--jobs=0"], "jobs must be >= 1"),
    (["--test_ckpt=first"], "test_ckpt"),
    (["--cell=99"], "no cell '99'"),
    (["--job=2"], "unrecognized arguments: --job=2"),  # no prefix matching of --jobs
])
def test_bad_grids_fail_with_one_line(tmp_path, capsys, args, message):
    cfg = grid_yaml(tmp_path, ["softmax"], [0])
    assert main(["ablate", "-c", str(cfg), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmkit: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "tiny" / "results.csv").exists()


def test_summary_table_marks_the_best_in_each_direction(tmp_path):
    spec = AblationSpec(configs=[str(REPO / "configs/vit/mnist.yaml")], normalizers=["softmax", "multimax"],
                        normalizer_dir=str(REPO / "configs/normalizer"), metrics=["test/acc1", "test/loss"])
    rows = [{"config": "a/mnist.yaml", "normalizer": n, "seed": s, "test/acc1": acc, "test/loss": loss}
            for n, s, acc, loss in [("softmax", 0, 0.9, 0.5), ("softmax", 1, 0.8, 0.7),
                                    ("multimax", 0, 0.95, 0.6), ("multimax", 1, 0.85, 0.8)]]
    lines = summary_table(spec, rows).splitlines()
    assert lines[0] == "| normalizer | mnist test/acc1 ↑ | mnist test/loss ↓ |"
    # ± std, then the 95% t interval: mean ± t(0.975, df=1) · std / √2 = mean ± 12.706 · std / √2
    assert lines[2] == "| softmax | 0.85 ± 0.07071 [0.2147, 1.485] | **0.6 ± 0.1414 [-0.6706, 1.871]** |"
    assert lines[3] == "| multimax | **0.9 ± 0.07071 [0.2647, 1.535]** | 0.7 ± 0.1414 [-0.5706, 1.971] |"


def test_parallel_jobs_run_cells_in_child_processes(tmp_path, capsys):
    cfg = grid_yaml(tmp_path, ["softmax", "multimax"], [0])
    assert main(["ablate", "-c", str(cfg), "--jobs=2"]) == 0
    cells = tmp_path / "out" / "tiny" / "cells"
    pids = set()
    for name in ("mnist-softmax-s0", "mnist-multimax-s0"):
        status = json.loads((cells / name / "status.json").read_text())
        assert status["state"] == "done" and (cells / name / "log.txt").is_file()
        pids.add(status["pid"])
    assert len(pids) == 2 and os.getpid() not in pids  # each cell ran in its own child process
    assert len(read_rows(tmp_path / "out" / "tiny" / "results.csv")) == 2
    assert "[2/2]" in capsys.readouterr().out


def test_a_rerun_with_another_definition_never_reports_the_old_cells(tmp_path, capsys):
    cfg = grid_yaml(tmp_path, ["softmax"], [0])
    assert main(["ablate", "-c", str(cfg)]) == 0
    root = tmp_path / "out" / "tiny"
    kept = {p: p.read_bytes() for p in (root / "ablation.yaml", root / "results.csv", root / "results.md")}
    capsys.readouterr()
    changed = "--args+=[--model.init_args.optimizer.init_args.lr=0.5]"
    assert main(["ablate", "-c", str(cfg), changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds cells run with another definition" in err[0], err
    assert "mnist-softmax-s0 (args +--model.init_args.optimizer.init_args.lr=0.5)" in err[0]
    assert {p: p.read_bytes() for p in kept} == kept  # the grid's YAML still describes its table
    # An edited base config changes the definition too, and so does an edited overlay.
    base = tmp_path / "mnist.yaml"
    base.write_text((REPO / "configs/vit/mnist.yaml").read_text())
    spec = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**spec, "configs": [str(base)]}))
    assert main(["ablate", "-c", str(cfg)]) == 0  # same name, same content: the finished cell counts
    assert "1 done" in capsys.readouterr().out
    base.write_text(base.read_text() + "\n# lr sweep\n")
    assert main(["ablate", "-c", str(cfg)]) == 2
    assert "config file mnist.yaml changed" in capsys.readouterr().err
    # Under a new name the changed grid runs beside the old one.
    assert main(["ablate", "-c", str(cfg), "--name=tiny_lr", changed]) == 0
    assert len(read_rows(tmp_path / "out" / "tiny_lr" / "results.csv")) == 1


def test_a_tensorboard_logged_grid_reports_from_the_test_results(tmp_path, capsys):
    tb = json.dumps({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                     "init_args": {"save_dir": str(tmp_path / "tb")}})
    cfg = grid_yaml(tmp_path, ["softmax", "multimax"], [0], args=[*TINY, f"--trainer.logger={tb}"])
    assert main(["ablate", "-c", str(cfg)]) == 0
    root = tmp_path / "out" / "tiny"
    rows = read_rows(root / "results.csv")
    assert sorted(r["normalizer"] for r in rows) == ["multimax", "softmax"]
    for row in rows:
        assert 0.0 <= float(row["test/acc1"]) <= 1.0 and float(row["val/loss"]) > 0
    assert not list(root.rglob("metrics.csv"))  # no CSV log: the numbers came from trainer.test()
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    out = capsys.readouterr().out
    assert "| softmax |" in out and f"plot:    {root / 'results.png'}" in out


def test_failed_grid_prints_no_table_or_plot_path(tmp_path, capsys):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  init_args:\n    network:\n      init_args:\n"
                   "        normalizer: {name: multimax, order: 0}\n")
    assert main(["ablate", "-c", str(grid_yaml(tmp_path, [str(bad)], [0]))]) == 1
    out = capsys.readouterr().out
    assert "results:" in out and "table:" not in out and "plot:" not in out
    assert not (tmp_path / "out" / "tiny" / "results.md").exists()


SLURM_ENV = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "mmkit-grid",
             "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def test_slurm_cells_never_resume_from_another_cells_hpc_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the array's launch directory
    cfg = grid_yaml(tmp_path, ["softmax", "sparsemax"], [0])
    assert main(["ablate", "-c", str(cfg), "--cell=0"]) == 0
    cells = tmp_path / "out" / "tiny" / "cells"
    softmax_last = cells / "mnist-softmax-s0" / "checkpoints" / "last.ckpt"
    # What Lightning saves on SIGUSR1 into the trainer's default_root_dir: once the launch directory
    # shared by every array task, now each cell's own directory.
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(softmax_last.read_bytes())
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["ablate", "-c", str(cfg), "--cell=1"]) == 0
    sparse = cells / "mnist-sparsemax-s0"
    with open(sparse / "run" / "metrics.csv") as f:
        trained = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(trained) == 2  # trained from scratch, not restored from the softmax cell's state
    record = torch.load(sparse / "checkpoints" / "last.ckpt", weights_only=True)["mmkit"]["definition"]
    assert record["network"]["init_args"]["normalizer"] == "sparsemax"

    # A softmax hpc checkpoint inside the sparsemax cell (copied by hand, say) is refused, not loaded.
    shutil.rmtree(sparse)
    sparse.mkdir()
    (sparse / "hpc_ckpt_1.ckpt").write_bytes(softmax_last.read_bytes())
    capsys.readouterr()
    assert main(["ablate", "-c", str(cfg), "--cell=1"]) == 1
    status = json.loads((sparse / "status.json").read_text())
    assert status["state"] == "failed"
    assert "network.normalizer: checkpoint SoftMax vs config SparseMax" in status["error"]


def test_slurm_array_requeues_and_appends_its_output(tmp_path):
    cfg = grid_yaml(tmp_path, ["softmax"], [0])
    assert main(["ablate", "-c", str(cfg), "--slurm=true", "--dry_run=true"]) == 0
    text = (tmp_path / "out" / "tiny" / "slurm" / "array.sbatch").read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --open-mode=append" in text
    assert '--cell "$SLURM_ARRAY_TASK_ID"' in text and "--progress_bar" not in text  # plain lines in .out


@pytest.mark.parametrize("extra", [[], ["--slurm=true", "--dry_run=true"]], ids=["run", "dry_run"])
def test_every_cells_arguments_are_checked_before_the_first_cell_runs(tmp_path, capsys, extra):
    cfg = grid_yaml(tmp_path, ["softmax", "multimax"], [0, 1], args=[*TINY, "--trainer.max_epochz=1"])
    assert main(["ablate", "-c", str(cfg), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cell mnist-softmax-s0 would fail" in err[0] and "max_epochz" in err[0], err
    assert not (tmp_path / "out").exists()  # nothing written: no ablation.yaml, no cell, no array script
