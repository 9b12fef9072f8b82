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

    One row per example, numbered, with the columns the task's
    ``prediction_rows(output)`` gives (by default, a ``predict_step`` that returns a list
    of dicts is taken as the rows). The file is written to a temporary name and
    renamed, so an interrupted run never leaves half a file. A task with a
    ``prediction_text_column`` also gets that column as ``predictions.txt``.
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
        to_rows = getattr(pl_module, "prediction_rows", None) or (lambda output: output)
        rows = [{"index": i, **row} for i, row in
                enumerate(row for output in predictions for row in to_rows(output))]
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["index"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        column = getattr(pl_module, "prediction_text_column", None)
        if column is not None:  # e.g. translations: one output line per input line
            text = self.path.with_suffix(".txt")
            tmp = text.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text("".join(f"{row[column]}\n" for row in rows), encoding="utf-8")
            os.replace(tmp, text)
