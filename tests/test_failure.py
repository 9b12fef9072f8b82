"""Failure behaviour: a run is protected from its first checkpoint step, evaluation never
runs on random weights by accident, and signals end runs honestly."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mmkit.cli import MMKitCLI
from mmkit.entry import main

from .conftest import quiet_trainer_args

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs/vit/mnist.yaml")
KJV = str(ROOT / "configs/lm/kjv.yaml")

pytestmark = pytest.mark.usefixtures("in_tmp")


class LastCheckpointProbe(Callback):
    """After every training batch (and after ModelCheckpoint), which step ``last.ckpt`` holds."""

    def __init__(self) -> None:
        self.seen: dict[int, int | None] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        held = torch.load(last, weights_only=True)["global_step"] if last.is_file() else None
        self.seen[trainer.global_step] = held


@pytest.mark.parametrize("config", [MNIST, KJV], ids=["vit", "lm"])
def test_every_n_train_steps_protects_the_run_before_the_first_validation(config, tmp_path):
    """The shipped configs monitor a val/ metric; validation comes only at the end here."""
    small = (["--data.init_args.max_chars=20000", "--data.init_args.vocab_size=300",
              "--model.network.init_args.vocab_size=300", "--data.init_args.tgt_len=16"]
             if config == KJV else ["--data.init_args.batch_size=8"])
    cli = MMKitCLI(args=["-c", config, "--model.network.init_args.preset=test", *small,
                         "--trainer.max_steps=7", "--trainer.val_check_interval=7",
                         "--trainer.check_val_every_n_epoch=null", "--trainer.limit_val_batches=1",
                         "--checkpoint.every_n_train_steps=3", *quiet_trainer_args(tmp_path)], run=False)
    assert cli.trainer.checkpoint_callback.monitor.startswith("val/")
    probe = LastCheckpointProbe()
    cli.trainer.callbacks.append(probe)  # after ModelCheckpoint
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert [probe.seen[s] for s in range(1, 7)] == [None, None, 3, 3, 3, 6]
    ckpts = Path(cli.trainer.checkpoint_callback.dirpath)
    best = [p for p in ckpts.glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1 and "step=7" in best[0].name  # the monitored save waited for its metric
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 7


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_evaluation_needs_a_checkpoint_unless_untrained_weights_are_asked_for(stage, tmp_path, capsys):
    run = ["-c", MNIST, "--model.network.init_args.preset=test", "--trainer.limit_val_batches=1",
           "--trainer.limit_test_batches=1", "--trainer.limit_predict_batches=1",
           "--data.init_args.batch_size=8", *quiet_trainer_args(tmp_path)]
    assert main([stage, *run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"`mmkit {stage}` needs the trained weights" in err[0], err
    assert not any(tmp_path.rglob("*.yaml"))  # nothing written
    # with no run to continue, `last` is an error too (not the random weights)
    assert main([stage, *run, "--ckpt_path=last"]) == 2
    assert "no run under" in capsys.readouterr().err
    assert main([stage, *run, "--allow_untrained=true"]) == 0


class SignalAt(Callback):
    """Send this process ``signum`` once, after training step ``step`` (only while the
    environment variable ``MMKIT_TEST_SIGNAL`` is set, when ``when_env`` is)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM, when_env: bool = False) -> None:
        self.step, self.signum, self.when_env, self.sent = step, signum, when_env, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        armed = not self.when_env or os.environ.get("MMKIT_TEST_SIGNAL")
        if trainer.global_step == self.step and not self.sent and armed:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def vit_run(tmp: Path, name: str, *extra: str) -> list[str]:
    """6 steps of a tiny ViT with dropout and augmentation; last.ckpt every 3 steps (shipped monitor)."""
    return ["fit", "-c", MNIST, "--model.network.init_args.preset=test",
            "--model.network.init_args.drop_rate=0.1", "--data.init_args.batch_size=16",
            "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
            "--checkpoint.every_n_train_steps=3", f"--trainer.logger.init_args.name={name}",
            *quiet_trainer_args(tmp), *extra]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["term", "int"])
def test_a_signal_saves_last_ckpt_exits_non_zero_and_the_run_resumes_exactly(signum, code, tmp_path, capsys):
    assert main(vit_run(tmp_path, "whole")) == 0
    whole = tmp_path / "whole" / "version_0" / "checkpoints" / "last.ckpt"
    stop = json.dumps({"class_path": "tests.test_failure.SignalAt",
                       "init_args": {"step": 4, "signum": int(signum)}})
    capsys.readouterr()
    assert main(vit_run(tmp_path, "cut", f"--trainer.callbacks+={stop}")) == code
    err = capsys.readouterr().err.strip().splitlines()[-1]
    last = tmp_path / "cut" / "version_0" / "checkpoints" / "last.ckpt"
    assert err == (f"mmkit: interrupted by {signal.Signals(signum).name}: {last} at step 4 holds its state; "
                   "resume with --ckpt_path last")
    assert torch.load(last, weights_only=True)["global_step"] == 4  # saved at the stop, not at step 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert not (last.parent.parent / ".lock").exists()  # the run directory is free again
    assert main([*vit_run(tmp_path, "cut"), "--ckpt_path=last"]) == 0
    got, ref = weights(last), weights(whole)
    assert torch.load(last, weights_only=True)["global_step"] == 6
    assert all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_a_signal_stops_the_grid_and_the_rerun_resumes_the_cell(signum, tmp_path, monkeypatch, capsys):
    stop = json.dumps({"class_path": "tests.test_failure.SignalAt",
                       "init_args": {"step": 2, "signum": int(signum), "when_env": True}})
    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps({
        "name": "g", "output_dir": str(tmp_path / "out"), "configs": [MNIST],
        "normalizers": ["softmax", "multimax"],
        "normalizer_dir": str(ROOT / "configs/normalizer"), "seeds": [0],
        "args": ["--model.init_args.network.init_args.preset=test", "--data.init_args.batch_size=16",
                 "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1",
                 "--trainer.limit_test_batches=1", "--checkpoint.every_n_train_steps=3",
                 "--trainer.enable_progress_bar=false", f"--trainer.callbacks+={stop}"]}))
    cells = tmp_path / "out" / "g" / "cells"
    monkeypatch.setenv("MMKIT_TEST_SIGNAL", "1")
    assert main(["ablate", "-c", str(grid)]) == 128 + signum
    status = json.loads((cells / "mnist-softmax-s0" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["signal"] == signal.Signals(signum).name
    last = cells / "mnist-softmax-s0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2  # saved at the signal
    assert not (cells / "mnist-multimax-s0").exists()  # the grid stopped
    assert "rerun the same command to resume it" in capsys.readouterr().out
    monkeypatch.delenv("MMKIT_TEST_SIGNAL")
    # The first attempt's clock survives the interrupt; pretend it started 1000 s before its save.
    saved = torch.load(last, weights_only=True)["mmkit"]["saved_unix"]
    assert status["earlier_s"] == 0 and status["started_unix"] <= saved
    status["started_unix"] = saved - 1000
    (cells / "mnist-softmax-s0" / "status.json").write_text(json.dumps(status))
    assert main(["ablate", "-c", str(grid)]) == 0
    assert (cells / "mnist-softmax-s0" / "run" / "config.resume-1.yaml").is_file()  # resumed, not redone
    result = json.loads((cells / "mnist-softmax-s0" / "result.json").read_text())
    assert 1000 <= result["wall_s"] < 1000 + 600  # both attempts count
    for name in ("mnist-softmax-s0", "mnist-multimax-s0"):
        assert json.loads((cells / name / "status.json").read_text())["state"] == "done"


DIVERGE = ["--model.init_args.optimizer.init_args.lr=1e30", "--trainer.gradient_clip_val=null"]


def test_no_checkpoint_holds_non_finite_weights_whatever_the_check_interval(tmp_path, capsys):
    """Checked every 5th step, saved every step: the save of a broken step is refused."""
    run = [*vit_run(tmp_path, "nan", *DIVERGE, "--checkpoint.every_n_train_steps=1",
                    "--nan_guard.check_every_n_steps=5")]
    assert main(run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged at global step" in err[0], err
    step = int(err[0].split("global step ")[1].split()[0])
    ckpts = sorted((tmp_path / "nan").rglob("*.ckpt"))
    for path in ckpts:
        saved = torch.load(path, weights_only=True)
        assert saved["global_step"] < step
        assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    if ckpts:  # the message names the checkpoint to resume from, and its step
        last = tmp_path / "nan" / "version_0" / "checkpoints" / "last.ckpt"
        held = torch.load(last, weights_only=True)["global_step"]
        assert f"{last} (step {held}) holds the last good state" in err[0]
    else:
        assert "no checkpoint was written before it (none to resume from)" in err[0]


def test_the_nan_message_says_when_there_is_no_checkpoint(tmp_path, capsys):
    assert main([*vit_run(tmp_path, "nan0", *DIVERGE, "--checkpoint.every_n_train_steps=100")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint was written before it (none to resume from)" in err
    assert not list((tmp_path / "nan0").rglob("*.ckpt"))


def test_a_run_directory_is_locked_while_it_trains(tmp_path, capsys):
    assert main(vit_run(tmp_path, "locked", "--trainer.max_epochs=1")) == 0
    run = tmp_path / "locked" / "version_0"
    assert not (run / ".lock").exists()  # released at the end
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "job": None,
                                               "since": "2026-01-01 00:00:00"}))
        files = sorted(run.rglob("*"))
        assert main([*vit_run(tmp_path, "locked"), "--ckpt_path=last"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is in use: pid {holder.pid} on {socket.gethostname()}" in err[0], err
        assert sorted(run.rglob("*")) == files  # no resume record, no checkpoint
    finally:
        holder.kill()
        holder.wait()
    assert main([*vit_run(tmp_path, "locked"), "--ckpt_path=last"]) == 0  # its holder is gone: taken over
    assert (run / "config.resume-1.yaml").is_file() and not (run / ".lock").exists()


def test_a_resume_applies_the_configs_optimizer_settings_and_refuses_another_optimizer(tmp_path, capsys):
    first = MMKitCLI(args=vit_run(tmp_path, "recipe", "--trainer.max_epochs=1"))
    assert first.trainer.lr_scheduler_configs[0].scheduler.base_lrs == [0.003, 0.003]  # mnist.yaml's
    resumed = MMKitCLI(args=[*vit_run(tmp_path, "recipe", "--model.init_args.optimizer.init_args.lr=0.01",
                                      "--model.init_args.optimizer.init_args.weight_decay=0.2"),
                             "--ckpt_path=last"])
    assert resumed.trainer.global_step == 6
    assert resumed.trainer.lr_scheduler_configs[0].scheduler.base_lrs == pytest.approx([0.01, 0.01])
    decay, no_decay = resumed.trainer.optimizers[0].param_groups
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0  # the no-decay group keeps 0
    assert decay["initial_lr"] == pytest.approx(0.01)
    run = tmp_path / "recipe" / "version_0"
    assert "lr: 0.01" in (run / "config.resume-1.yaml").read_text()  # the change is on record
    sgd = "--model.init_args.optimizer=torch.optim.SGD"
    assert main([*vit_run(tmp_path, "recipe", "--trainer.max_epochs=3", sgd), "--ckpt_path=last"]) == 2
    err = capsys.readouterr().err
    assert "trained with the optimizer torch.optim.AdamW and this config asks for torch.optim.SGD" in err


def _small_file_limit() -> None:  # in the child: writes past 64 KiB fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_previous(tmp_path):
    assert main(vit_run(tmp_path, "full", "--trainer.max_epochs=1")) == 0
    last = tmp_path / "full" / "version_0" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    assert len(before) > 64 * 1024
    command = [sys.executable, "-m", "mmkit", *vit_run(tmp_path, "full"), "--ckpt_path=last"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          preexec_fn=_small_file_limit)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mmkit: error: could not write the checkpoint {last}: File too large (EFBIG)")
    assert "the previous checkpoint there is intact" in line
    assert last.read_bytes() == before
    assert not list(last.parent.glob(".mmkit-partial-*"))


@pytest.mark.slow
def test_sigterm_to_a_parallel_grid_reaches_every_running_cell(tmp_path):
    """``jobs: 2``: SIGTERM to the grid process (what a scheduler sends) goes on to both
    running cells, which save and are marked interrupted; the grid exits 143, leaves no cell
    process behind, and the rerun resumes both cells."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps({
        "name": "g", "output_dir": str(tmp_path / "out"), "configs": [MNIST], "jobs": 2,
        "normalizers": ["softmax", "multimax"], "normalizer_dir": str(ROOT / "configs/normalizer"),
        "seeds": [0],
        "args": ["--model.init_args.network.init_args.preset=test", "--data.init_args.batch_size=16",
                 "--trainer.max_epochs=1", "--trainer.limit_train_batches=400",
                 "--trainer.limit_val_batches=1",
                 "--trainer.limit_test_batches=1", "--checkpoint.every_n_train_steps=2",
                 "--trainer.enable_progress_bar=false"]}))
    cells = [tmp_path / "out" / "g" / "cells" / f"mnist-{n}-s0" for n in ("softmax", "multimax")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    grid_run = subprocess.Popen([sys.executable, "-m", "mmkit", "ablate", "-c", str(grid)], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not all((c / "checkpoints" / "last.ckpt").is_file() for c in cells):  # both are training
        assert grid_run.poll() is None and time.monotonic() < deadline, grid_run.communicate()[0][-2000:]
        time.sleep(0.2)
    pids = [json.loads((c / "status.json").read_text())["pid"] for c in cells]
    grid_run.send_signal(signal.SIGTERM)
    out = grid_run.communicate(timeout=120)[0]
    assert grid_run.returncode == 143, out[-2000:]
    assert "rerun the same command to resume it" in out
    for cell, pid in zip(cells, pids):
        status = json.loads((cell / "status.json").read_text())
        assert status["state"] == "interrupted" and status["signal"] == "SIGTERM", status
        with pytest.raises(ProcessLookupError):  # the cell process has ended
            os.kill(pid, 0)
    rerun = subprocess.run([sys.executable, "-m", "mmkit", "ablate", "-c", str(grid)], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    for cell in cells:
        assert (cell / "run" / "config.resume-1.yaml").is_file()  # resumed, not redone
        assert json.loads((cell / "status.json").read_text())["state"] == "done"
