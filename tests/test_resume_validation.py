"""A run resumed from the checkpoint of an epoch's last batch runs that epoch's validation.

Lightning 2.6 would skip it (the checkpoint is written on the batch's end, before the
validation), so its metrics would be missing from the resumed log; ``ExactResume`` runs
it. A checkpoint written after the validation (``every_n_epochs``) must not repeat it.
Each case trains a reference run that keeps every checkpoint, then resumes from its
checkpoint of step 6 (epoch 0's last batch) or 12 (epoch 1's, the last) in a new
directory and compares the validation rows logged from there on, and the final weights.
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
    res = subprocess.run([sys.executable, "-m", "mmkit", "fit", *ARGS, *extra,
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


def _reference(tmp_path: Path, *extra: str) -> Path:
    reference = tmp_path / "reference"
    reference.mkdir()
    _fit(reference, *extra)
    return reference


def _resume(reference: Path, name: str, *extra: str) -> dict:
    """The validation rows of a run resumed from the reference's checkpoint ``name``; its
    final weights equal the reference's."""
    resumed = reference.parent / f"resumed-{name}"
    resumed.mkdir()
    (ckpt,) = reference.glob(f"*/version_0/checkpoints/{name}*.ckpt")
    _fit(resumed, *extra, f"--ckpt_path={ckpt}")
    ref_w, got_w = _weights(reference), _weights(resumed)
    assert [k for k in ref_w if not torch.equal(ref_w[k], got_w[k])] == []
    return _val_rows(resumed)


def test_checkpoint_of_an_epochs_last_batch_resumes_with_its_validation(tmp_path: Path) -> None:
    every3 = "--checkpoint.every_n_train_steps=3"
    reference = _reference(tmp_path, every3)
    ref = _val_rows(reference)
    assert sorted(ref) == [(0, 5), (1, 11)]  # the logger's step: batches stepped before it
    # (0, 5) runs after the step-6 checkpoint; (1, 11) after the last one, from the first
    # validation batch, although the restored validation loop had finished epoch 0's.
    assert _resume(reference, "epoch=0-step=6", every3) == ref
    assert _resume(reference, "epoch=1-step=12", every3) == {(1, 11): ref[(1, 11)]}


@pytest.mark.slow
def test_checkpoint_written_after_the_validation_does_not_repeat_it(tmp_path: Path) -> None:
    reference = _reference(tmp_path, "--checkpoint.every_n_epochs=1")
    ref = _val_rows(reference)
    assert sorted(ref) == [(0, 5), (1, 11)]
    assert _resume(reference, "epoch=0-step=6", "--checkpoint.every_n_epochs=1") == {(1, 11): ref[(1, 11)]}
