"""Trainer options where an int counts batches and a float is a fraction parse as the user wrote
them, whatever order of imports left ``typing``'s union cache float-first."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

from mmkit.cli import MMKitCLI
from mmkit.cli.trainer_types import pin_int_first

from .conftest import quiet_trainer_args

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs/vit/mnist.yaml")
COUNTS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


def parsed(tmp: Path, *extra: str) -> Trainer:
    cli = MMKitCLI(args=["-c", MNIST, "--model.network.init_args.preset=test",
                         *quiet_trainer_args(tmp), *extra], run=False)
    return cli.trainer


def test_float_first_annotation_is_reordered_and_one_means_one_batch(tmp_path, monkeypatch):
    annotations = Trainer.__init__.__annotations__
    for name in COUNTS:  # the state a float-first union cache leaves behind
        monkeypatch.setitem(annotations, name, float | int | None)
    trainer = parsed(tmp_path, "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1.0",
                     "--trainer.limit_train_batches=0.5")
    assert type(trainer.limit_val_batches) is int and trainer.limit_val_batches == 1
    assert type(trainer.limit_test_batches) is float and trainer.limit_test_batches == 1.0
    assert trainer.limit_train_batches == 0.5
    assert [typing.get_args(annotations[name]) for name in COUNTS] == [(int, float, type(None))] * 4


def test_pin_int_first_leaves_other_annotations_alone():
    def f(a, b, c, d, e): ...

    others = {"a": int | float, "b": str | None, "d": float, "e": "float | int"}  # e: unevaluated
    f.__annotations__ = {**others, "c": float | str | int}
    assert pin_int_first(f) == ["c"]
    assert typing.get_args(f.__annotations__["c"]) == (int, float, str)
    assert {k: v for k, v in f.__annotations__.items() if k != "c"} == others


@pytest.mark.parametrize("first", ["rich.console", "mmkit.entry"])
def test_one_validation_batch_whatever_was_imported_first(tmp_path, first):
    """A fresh interpreter that imports ``first`` before mmkit's CLI (rich first used to turn
    ``1`` into ``1.0``, i.e. 100% of the validation batches)."""
    code = (f"import {first}\n"
            "from mmkit.cli import MMKitCLI\n"
            f"cli = MMKitCLI(args=['-c', {MNIST!r}, '--model.network.init_args.preset=test', "
            f"'--trainer.default_root_dir={tmp_path}', '--trainer.limit_val_batches', '1'], run=False)\n"
            "print(repr(cli.trainer.limit_val_batches))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1"
