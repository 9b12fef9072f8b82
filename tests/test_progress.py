"""Readable output: the progress bar fits where the output goes (plain lines in a file, Rich
on a terminal), every run ends with a line naming what it wrote, and an ablation's parallel
cells share the cores and say how long the grid has left."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel
from rich.console import Console

from mmkit.ablation import command
from mmkit.ablation.parallel import THREAD_VARS, cell_threads, describe_threads, run_subprocess
from mmkit.cli import MMKitCLI
from mmkit.cli.formatting import duration
from mmkit.cli.progress import PlainProgressBar, default_progress_bar
from mmkit.cli.summary import RunSummary
from mmkit.entry import main

from .test_cli import MNIST, fast

ROOT = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^fit epoch 1/1 step (\d+)/6 \(\d+%\) \| .*train/loss=[0-9.]+.* steps/s .*"
                       r"\| epoch ETA \S+ \| run ETA \S+$")

pytestmark = pytest.mark.usefixtures("in_tmp")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def run_messages():
    """The messages of Lightning's rank-zero info logger (stderr in a real run), where
    :class:`RunSummary` writes."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.INFO)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def shown(tmp_path: Path) -> list[str]:
    """``fast`` arguments with the progress bar left on."""
    return [a for a in fast(tmp_path) if not a.startswith("--trainer.enable_progress_bar")]


@pytest.mark.parametrize("stdout_tty, stderr_tty, expected", [
    (False, False, PlainProgressBar),  # redirected: SLURM .out, a cell's log.txt, `> log 2>&1`
    (True, True, RichProgressBar),  # a terminal
    (True, False, RichProgressBar),  # `2> err.txt`: Rich still draws on the terminal
    (False, True, PlainProgressBar),  # `> out.txt`: Rich would draw into the file; plain lines go to stderr
])
def test_the_default_bar_follows_the_terminal(stdout_tty, stderr_tty, expected, monkeypatch):
    monkeypatch.delenv("MMKIT_PROGRESS", raising=False)
    monkeypatch.delenv("MMKIT_PROGRESS_INTERVAL", raising=False)
    monkeypatch.setattr(sys, "stdout", _Stream(stdout_tty))
    monkeypatch.setattr(sys, "stderr", _Stream(stderr_tty))
    bar = default_progress_bar()
    assert type(bar) is expected
    if isinstance(bar, PlainProgressBar):
        assert bar.interval == 30.0


def test_mmkit_progress_forces_a_choice(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Stream(True))
    monkeypatch.setenv("MMKIT_PROGRESS", "plain")
    monkeypatch.setenv("MMKIT_PROGRESS_INTERVAL", "2.5")
    bar = default_progress_bar()
    assert isinstance(bar, PlainProgressBar) and bar.interval == 2.5
    monkeypatch.setattr(sys, "stdout", _Stream(False))
    monkeypatch.setenv("MMKIT_PROGRESS", "Rich")
    assert isinstance(default_progress_bar(), RichProgressBar)
    monkeypatch.setenv("MMKIT_PROGRESS", "none")
    assert default_progress_bar() is None
    monkeypatch.setenv("MMKIT_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="MMKIT_PROGRESS='fancy' is not one of auto, rich, plain, none"):
        default_progress_bar()
    monkeypatch.setenv("MMKIT_PROGRESS", "plain")
    monkeypatch.setenv("MMKIT_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="MMKIT_PROGRESS_INTERVAL='soon' must be a number"):
        default_progress_bar()


def test_a_bad_mmkit_progress_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMKIT_PROGRESS", "fancy")
    assert main(["fit", "-c", MNIST, *shown(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit: error: MMKIT_PROGRESS='fancy'"), err


def test_duration():
    assert [duration(s) for s in (0, 44.6, 187, 7500, 97200)] == ["0s", "45s", "3m07s", "2h05m", "1d03h"]
    assert duration(float("inf")) == "?"


def test_plain_lines_and_the_summary_of_fit_and_test(tmp_path, monkeypatch, capsys, run_messages):
    monkeypatch.setenv("MMKIT_PROGRESS", "plain")
    monkeypatch.setenv("MMKIT_PROGRESS_INTERVAL", "0")  # a line every batch
    cli = MMKitCLI(args=["fit", "-c", MNIST, *shown(tmp_path)])
    assert isinstance(cli.trainer.progress_bar_callback, PlainProgressBar)
    err = capsys.readouterr().err.splitlines()
    steps = [line for line in err if line.startswith("fit epoch 1/1 step ")]
    assert [line.split()[4] for line in steps] == ["1/3", "2/3", "3/3"], err
    assert all("train/loss=" in line and "steps/s" in line and "samples/s" in line for line in steps)
    assert any(line.startswith("validation epoch 1/1 done: 2 batches in ") and "val/acc1=" in line
               for line in err), err
    assert any(line.startswith("fit epoch 1/1 done: 3 steps in ") for line in err), err
    before = err[:err.index(steps[0])]
    assert not any(line.startswith("validation") for line in before), err  # the sanity check is quiet

    assert not any(line.startswith("mmkit:") for line in err)  # stderr holds only the progress
    summary = [line for line in run_messages if line.startswith("mmkit: fit done")]
    assert len(summary) == 1 and summary[0] == run_messages[-1], run_messages
    run = Path(cli.trainer.log_dir)
    last = run / "checkpoints" / "last.ckpt"
    fields = dict(part.split(" ", 1) for part in summary[0].split(" | ")[1:3])
    assert summary[0].startswith(f"mmkit: fit done after 1 epoch, 3 steps: run {run} | ")
    assert Path(fields["last"]) == last and last.is_file()
    best, score = fields["best"].rsplit(" (", 1)
    assert Path(best).is_file() and best == cli.trainer.checkpoint_callback.best_model_path
    assert re.fullmatch(r"val/acc1=[0-9.e-]+\)", score)
    assert re.search(r" \| val/acc1=[0-9.e-]+ val/acc5=[0-9.e-]+ val/loss=[0-9.e-]+$", summary[0])

    MMKitCLI(args=["test", "-c", MNIST, *shown(tmp_path), f"--ckpt_path={last}"])
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("test done: 2 batches in ") and "test/acc1=" in line for line in err), err
    summary = [line for line in run_messages if line.startswith("mmkit: test done")]
    assert len(summary) == 1 and f" | checkpoint {last} | test/acc1=" in summary[0], run_messages


def test_the_epoch_total_holds_when_max_steps_ends_the_run(tmp_path, monkeypatch, capsys):
    # 3 batches per epoch, 5 steps: epoch 1 has 3 batches, epoch 2 the 2 steps left. Lightning's
    # own total shrinks with every step taken (it printed "3/2" and "2/0").
    monkeypatch.setenv("MMKIT_PROGRESS", "plain")
    monkeypatch.setenv("MMKIT_PROGRESS_INTERVAL", "0")
    args = [a for a in shown(tmp_path) if not a.startswith("--trainer.max_epochs")]
    MMKitCLI(args=["fit", "-c", MNIST, *args, "--trainer.max_epochs=-1", "--trainer.max_steps=5"])
    err = capsys.readouterr().err.splitlines()
    steps = [line.split()[4] for line in err if re.match(r"fit epoch \d+ step ", line)]
    assert steps == ["1/3", "2/3", "3/3", "1/2", "2/2"], err


@pytest.mark.parametrize("accumulate, max_steps, batches, expected", [
    (1, 5, 3, [3, 3, 3, 2, 2]),  # epoch 1 whole, epoch 2 has the 2 steps left
    (2, 5, 20, [10] * 10),  # 5 steps of 2 batches: 10 batches, at every batch
    (2, 5, 7, [7] * 7 + [2] * 2),  # 4 steps in epoch 1 (the last at its end), 1 step of 2 batches left
])
def test_the_epoch_total_with_accumulation(accumulate, max_steps, batches, expected):
    totals, step, epoch_batch = [], 0, 0
    for _ in range(sum(1 for _ in expected)):
        epoch_batch += 1
        if epoch_batch % accumulate == 0 or epoch_batch == batches:  # Lightning steps at an epoch's end too
            step += 1
        trainer = SimpleNamespace(num_training_batches=batches, max_steps=max_steps, global_step=step,
                                  accumulate_grad_batches=accumulate)
        totals.append(PlainProgressBar._epoch_total(trainer, epoch_batch - 1))
        if epoch_batch == batches:
            epoch_batch = 0
    assert totals == expected


def test_no_progress_and_a_summary_without_logger_or_checkpoints(tmp_path, capsys, run_messages):
    """Lightning's defaults minus a logger and checkpoints: the summary still comes, and says so."""
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                      callbacks=[PlainProgressBar(interval=3600), RunSummary()], max_steps=2,
                      limit_val_batches=1, num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(BoringModel())
    summary = f"mmkit: fit done after 1 epoch, 2 steps: run {tmp_path} | no checkpoint callback"
    assert run_messages[-1] == summary, run_messages
    err = capsys.readouterr().err.splitlines()
    assert not any(" step " in line for line in err), err  # lines an hour apart; max_steps: no epoch total
    assert any(line.startswith("fit epoch 1 done: 2 steps in ") for line in err), err


def test_no_summary_for_a_run_that_fails_before_training(tmp_path, capsys, run_messages):
    assert main(["fit", "-c", MNIST, *shown(tmp_path), "--model.network.init_args.num_classes=7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit: error: "), err
    assert not any(line.startswith("mmkit:") for line in run_messages)


class SnapshotLog(Callback):
    """In a ``mmkit fit`` child: copy its own log (stdout and stderr redirected to ``log``)
    to ``snapshot`` after ``batch`` training batches, while the first epoch still runs."""

    def __init__(self, log: str, snapshot: str, batch: int = 4) -> None:
        self.log_path, self.snapshot_path, self.batch = log, snapshot, batch

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 == self.batch and trainer.current_epoch == 0:
            Path(self.snapshot_path).write_text(Path(self.log_path).read_text())


def test_a_redirected_fit_writes_progress_lines_during_the_first_epoch(tmp_path):
    log, snapshot = tmp_path / "log.txt", tmp_path / "snapshot.txt"
    spy = f'{{"class_path": "tests.test_progress.SnapshotLog", "init_args": {{"log": "{log}", ' \
          f'"snapshot": "{snapshot}"}}}}'
    args = [a for a in shown(tmp_path) if "limit_train_batches" not in a]
    env = {k: v for k, v in os.environ.items() if k not in ("MMKIT_PROGRESS", *THREAD_VARS)}
    env.update(MMKIT_PROGRESS_INTERVAL="0.01", PYTHONPATH=str(ROOT))
    with open(log, "w") as out:  # not a terminal: the plain bar, chosen by itself
        done = subprocess.run([sys.executable, "-m", "mmkit", "fit", "-c", MNIST, *args,
                               "--trainer.limit_train_batches=6", f"--trainer.callbacks+={spy}"],
                              stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    during = [line for line in snapshot.read_text().splitlines() if STEP_LINE.match(line)]
    assert during and int(STEP_LINE.match(during[-1]).group(1)) <= 4, snapshot.read_text()[-3000:]
    assert "fit epoch 1/1 done" not in snapshot.read_text()
    lines = text.splitlines()
    assert any(line.startswith("fit epoch 1/1 done: 6 steps") for line in lines), text[-3000:]
    assert lines[-1].startswith("mmkit: fit done after 1 epoch, 6 steps: run ") and "last.ckpt" in lines[-1]


def test_parallel_cells_share_the_cores(monkeypatch):
    cores = os.cpu_count() or 1
    assert cell_threads(1, {}) == {}
    assert cell_threads(2, {}) == dict.fromkeys(THREAD_VARS, str(max(1, cores // 2)))
    assert cell_threads(4 * cores, {}) == dict.fromkeys(THREAD_VARS, "1")
    assert cell_threads(2, {"OMP_NUM_THREADS": "3"}) == {}  # the user's choice holds
    assert "threads per cell from the environment (OMP_NUM_THREADS=3)" in describe_threads(
        2, {"OMP_NUM_THREADS": "3"})
    assert describe_threads(4 * cores, {}).startswith(f"{4 * cores} cells at once, 1 thread each")

    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)

    class Stopped:  # the grid was stopped: the child is never started
        def start(self, cmd: list[str], log: Any, env: dict[str, str]) -> None:
            self.cmd, self.env = cmd, env

    cell = SimpleNamespace(id="c", dir=Path("cell"))
    children = Stopped()
    assert run_subprocess(cell, Path("grid.yaml"), "1", children, jobs=2) is None
    assert {k: children.env[k] for k in THREAD_VARS} == cell_threads(2, {})
    assert children.env["CUDA_VISIBLE_DEVICES"] == "1" and "--progress_bar=true" in children.cmd
    run_subprocess(cell, Path("grid.yaml"), None, children, jobs=1, progress_bar=False)
    assert not any(k in children.env for k in THREAD_VARS) and "--progress_bar=false" in children.cmd
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    run_subprocess(cell, Path("grid.yaml"), None, children, jobs=2)
    assert children.env["OMP_NUM_THREADS"] == "3" and "MKL_NUM_THREADS" not in children.env

    # torch in the child takes its intra-op threads from OMP_NUM_THREADS
    env = {**{k: v for k, v in os.environ.items() if k not in THREAD_VARS}, **cell_threads(4 * cores, {})}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1", out.stderr
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("jobs", [1, 3])
def test_cells_are_numbered_once_each_with_the_grids_eta(jobs, monkeypatch):
    todo = [SimpleNamespace(id=f"cell{i}") for i in range(12)]
    spec = SimpleNamespace(jobs=jobs, devices=None)
    out = io.StringIO()
    console = Console(file=out, width=300, highlight=False, soft_wrap=True)

    def fake_parallel(cells, grid_yaml, n, devices, on_start, on_end, progress_bar):
        def one(cell):
            on_start(cell, None)
            if cell.id == "cell5":
                on_end(cell, None, command.CellFailed(cell, "broken [B, 1, 32, 32]"))
            else:
                on_end(cell, {"wall_s": 1.0, "test/acc1": 0.5}, None)
        threads = [threading.Thread(target=one, args=(cell,)) for cell in cells]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def fake_in_process(cell, cli, display):
        if cell.id == "cell5":
            raise command.CellFailed(cell, "broken [B, 1, 32, 32]")
        return {"wall_s": 1.0, "test/acc1": 0.5}

    monkeypatch.setattr(command, "run_parallel", fake_parallel)
    monkeypatch.setattr(command, "run_in_process", fake_in_process)
    failed = command.run_cells(spec, todo, Path("grid.yaml"), console, None, [])
    assert [c.id for c in failed] == ["cell5"]
    text = out.getvalue()
    starts = re.findall(r"\[(\d+)/12\] cell\d+ \(\d+ left after this\)", text)
    ends = re.findall(r"\[(\d+)/12\] cell\d+ (?:done in 1 s: test/acc1=0\.5"
                      r"|failed: cell5: broken \[B, 1, 32, 32\])", text)
    assert sorted(map(int, starts)) == list(range(1, 13)) == sorted(map(int, ends)), text
    etas = re.findall(r"; grid ETA (\S+) \((\d+) left\)", text)
    assert [int(left) for _, left in etas] == list(range(11, 0, -1)), text
    assert ("cells at once" in text) == (jobs > 1)
