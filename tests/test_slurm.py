"""SLURM auto-requeue without a cluster: fake SLURM variables and a fake `scontrol`, SIGUSR1 to a
running `mmkit fit -c configs/trainer/slurm.yaml`, then the "requeued" rerun resumes from the
hpc checkpoint and finishes."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmkit.cli import MMKitCLI

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs/vit/mnist.yaml")
SLURM = str(ROOT / "configs/trainer/slurm.yaml")
JOB_ID = "4242"
STEPS = 200

# The fake scontrol records its arguments, then does what SLURM does after a requeue: SIGTERM the job.
SCONTROL = """#!/bin/sh
echo "$@" >> "{log}"
kill -TERM $PPID
"""


def test_slurm_overlay_installs_the_requeue_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = MMKitCLI(args=["-c", MNIST, "-c", SLURM], run=False)
    env = cli.trainer._accelerator_connector.cluster_environment
    assert type(env).__name__ == "SLURMEnvironment" and env.auto_requeue
    assert env.requeue_signal == signal.SIGUSR1 and cli.trainer.default_root_dir == "runs/slurm"


def test_sbatch_script_requeues_and_resumes():
    text = (ROOT / "tools/slurm/train.sbatch").read_text()
    for line in ("#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue",
                 "srun mmkit fit -c configs/trainer/slurm.yaml",
                 '--trainer.logger.init_args.version="${SLURM_JOB_ID}"', "--ckpt_path last"):
        assert line in text
    subprocess.run(["bash", "-n", str(ROOT / "tools/slurm/train.sbatch")], check=True)


def train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_sigusr1_saves_requeues_and_the_rerun_resumes(tmp_path):
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(SCONTROL.format(log=calls))
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_ID=JOB_ID, SLURM_NTASKS="1",
               SLURM_JOB_NAME="mmkit-test", SLURM_NODELIST="localhost", SLURM_PROCID="0",
               SLURM_LOCALID="0", SLURM_NODEID="0")
    root = tmp_path / "slurm" / JOB_ID
    command = [sys.executable, "-m", "mmkit", "fit", "-c", SLURM, "-c", MNIST,
               "--model.network.init_args.preset=test", "--data.init_args.batch_size=8",
               "--trainer.max_epochs=1", f"--trainer.limit_train_batches={STEPS}",
               "--trainer.limit_val_batches=1",
               "--trainer.log_every_n_steps=1", "--trainer.logger.init_args.flush_logs_every_n_steps=1",
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
               f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
               f"--trainer.default_root_dir={root}",
               f"--trainer.logger.init_args.version={JOB_ID}", "--ckpt_path", "last"]
    run_dir = tmp_path / "runs" / "vit_mnist" / f"version_{JOB_ID}"  # Lightning's name for an int version
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while len(train_steps(run_dir)) < 5:  # training is under way
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.1)
        first.send_signal(signal.SIGUSR1)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert "Handling auto-requeue signal" in out, out
    assert calls.read_text().split() == ["requeue", JOB_ID]
    assert first.returncode == 128 + signal.SIGTERM  # the requeue's SIGTERM: an honest, non-zero exit
    hpc = root / "hpc_ckpt_1.ckpt"
    saved = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    assert 5 <= saved < STEPS and not list(root.glob(".mmkit-partial-*"))
    assert max(train_steps(run_dir)) < STEPS - 1
    # The SIGTERM also wrote last.ckpt at the next batch boundary; the rerun takes the newer one.
    last = run_dir / "checkpoints" / "last.ckpt"
    newer = max((hpc, last), key=lambda p: p.stat().st_mtime)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] >= saved

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"Restoring states from the checkpoint path at {newer}" in second.stderr, second.stderr
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == STEPS
    steps = train_steps(run_dir)  # one metrics.csv, appended: no step is trained twice (from scratch)
    assert max(steps) in (STEPS - 1, STEPS) and len(steps) - len(set(steps)) <= 2, steps
    assert not calls.read_text().count("requeue") > 1


def slurm_env(monkeypatch) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in dict(SLURM_JOB_ID=JOB_ID, SLURM_NTASKS="1", SLURM_JOB_NAME="mmkit-test",
                           SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0").items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("newer", ["hpc", "last"])
def test_ckpt_path_last_takes_the_newer_of_hpc_and_last(newer, tmp_path, monkeypatch):
    from jsonargparse import Namespace

    from mmkit.cli.runs import resolve_checkpoint

    slurm_env(monkeypatch)
    wanted = {"task": "T", "network": {"class_path": "N", "init_args": {"depth": 2}}, "data": None}
    run = tmp_path / "runs" / "n" / f"version_{JOB_ID}"  # this job's run: its logger version is pinned
    last = run / "checkpoints" / "last.ckpt"
    hpc = tmp_path / "root" / "hpc_ckpt_2.ckpt"
    other_job = tmp_path / "runs" / "n" / "version_7" / "checkpoints" / "last.ckpt"
    for path in (last, hpc, tmp_path / "root" / "hpc_ckpt_1.ckpt", other_job):
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {}, "mmkit": {"definition": wanted}}, path)
    old, new = (last, hpc) if newer == "hpc" else (hpc, last)
    os.utime(old, (time.time() - 100, time.time() - 100))
    os.utime(other_job, (time.time() + 100, time.time() + 100))  # newest, but another job's run

    def config() -> Namespace:
        init = Namespace(save_dir=str(tmp_path / "runs"), name="n", version=int(JOB_ID))
        return Namespace(ckpt_path="last", checkpoint=Namespace(dirpath=None),
                         trainer=Namespace(default_root_dir=str(tmp_path / "root"),
                                           logger=Namespace(class_path="x", init_args=init)))

    got = config()
    resolve_checkpoint(got, wanted, "fit", trust=False)
    assert got.ckpt_path == str(new)
    assert str(got.trainer.logger.init_args.version) in (JOB_ID, f"version_{JOB_ID}")
    monkeypatch.delenv("SLURM_NTASKS")  # not under SLURM: hpc checkpoints are ignored
    got = config()
    resolve_checkpoint(got, wanted, "fit", trust=False)
    assert got.ckpt_path == str(last)
