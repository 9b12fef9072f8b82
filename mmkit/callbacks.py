"""Callbacks that the ``mmkit`` command adds by default."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionsCSV(BasePredictionWriter):
    """Write ``mmkit predict`` results to ``<log_dir>/predictions.csv``.

    One row per example: its index in the predict set, the predicted class and that
    class's probability under the output normalizer. The file is written to a
    temporary name and renamed, so an interrupted run never leaves half a file.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule,
                           predictions: list[Any], batch_indices: list[Any]) -> None:
        log_dir = trainer.log_dir or trainer.default_root_dir
        self.path = Path(log_dir) / self.filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        index = 0
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "pred", "prob"])
            for batch in predictions:
                pred, probs = batch["pred"], batch["probs"]
                chosen = probs.gather(-1, pred[:, None])[:, 0]
                for p, q in zip(pred.tolist(), chosen.tolist()):
                    writer.writerow([index, p, f"{q:.6g}"])
                    index += 1
        os.replace(tmp, self.path)
