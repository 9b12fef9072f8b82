"""A run resumed from the checkpoint of an epoch's last batch runs that epoch's validation.

Lightning 2.6 would skip it (the checkpoint is written on the batch's end, before the
validation), so its metrics would be missing from the resumed log; ``ExactResume`` runs
it. A checkpoint written after the validation (``every_n_epochs``) must not repeat it.
Each case trains a reference run that keeps every checkpoint, then resumes from its step-6
checkpoint (epoch 0's last batch) in a new directory and compares the validation rows
logged from step 6 on, and the final weights.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["-c", str(ROOT / "configs/vit/mnist.yaml"), "--model.network.init_args.preset=test",
        "--model.network.init_args.drop_rate=0.1", "--data.init_args.batch_size=32",
        "--data.init_args.augment=light", "--trainer.max_epochs=2", "--trainer.limit_train_batches=6",
        "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--trainer.log_every_n_steps=1",
        "--trainer.num_sanity_val_steps=0", "--checkpoint.monitor=null", "--checkpoint.save_top_k=-1"]


def _fit(save_dir: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "mmkit.cli", "fit", *ARGS, *extra,
                          f"--trainer.logger.init_args.save_dir={save_dir}"], cwd=save_dir, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


def _val_rows(save_dir: Path) -> dict[tuple[int, int], dict[str, str]]:
    """``(epoch, step) -> val metrics`` of every validation row in the run's metrics.csv."""
    (path,) = save_dir.glob("*/version_0/metrics.csv")
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if any(r[k] for k in r if k.startswith("val/"))]
    return {(int(r["epoch"]), int(r["step"])): {k: v for k, v in r.items() if k.startswith("val/")}
            for r in rows}


def _weights(save_dir: Path) -> dict[str, torch.Tensor]:
    (path,) = save_dir.glob("*/version_0/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _resume_from_step_6(tmp_path: Path, *extra: str) -> tuple[dict, dict]:
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference.mkdir()
    resumed.mkdir()
    _fit(reference, *extra)
    (ckpt,) = reference.glob("*/version_0/checkpoints/epoch=0-step=6*.ckpt")
    _fit(resumed, *extra, f"--ckpt_path={ckpt}")
    ref_w, got_w = _weights(reference), _weights(resumed)
    assert [k for k in ref_w if not torch.equal(ref_w[k], got_w[k])] == []
    return _val_rows(reference), _val_rows(resumed)


def test_checkpoint_of_an_epochs_last_batch_resumes_with_its_validation(tmp_path: Path) -> None:
    ref, got = _resume_from_step_6(tmp_path, "--checkpoint.every_n_train_steps=3")
    assert sorted(ref) == [(0, 5), (1, 11)]  # the logger's step: batches stepped before it
    assert got == ref  # (0, 5) included: it ran after the step-6 checkpoint


@pytest.mark.slow
def test_checkpoint_written_after_the_validation_does_not_repeat_it(tmp_path: Path) -> None:
    ref, got = _resume_from_step_6(tmp_path, "--checkpoint.every_n_epochs=1")
    assert sorted(ref) == [(0, 5), (1, 11)]
    assert got == {(1, 11): ref[(1, 11)]}
