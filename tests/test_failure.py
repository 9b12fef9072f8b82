"""Failure behaviour: a run is protected from its first checkpoint step, evaluation never
runs on random weights by accident, and signals end runs honestly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mmkit.cli import MMKitCLI, main

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
