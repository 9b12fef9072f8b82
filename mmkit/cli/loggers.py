"""Loggers for the ``mmkit`` command.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it opens an existing run
directory, so resuming a run in place (``--ckpt_path last``) would silently drop
the metrics logged before the interruption. :class:`CSVLogger` appends instead, and
:class:`MetricsFollowCheckpoint` drops the rows logged after the checkpoint it resumes from.
It also creates the run directory only when it first writes to it, so a command
refused during setup leaves no empty ``version_N/`` behind.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_warn


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer, except that it keeps (and continues) an existing ``metrics.csv``
    and makes its directory on the first write instead of when it is opened."""

    def __init__(self, log_dir: str) -> None:  # the parents' init, minus the eager makedirs
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self._fs = get_filesystem(log_dir)
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self._check_log_dir_exists()

    def _check_log_dir_exists(self) -> None:
        self.rows = 0  # data rows in the file, kept up to date by save() and _keep_rows()
        if self._fs.isfile(self.metrics_file_path):  # keep it; continue its columns
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.reader(f)
                self.metrics_keys = list(next(reader, []))
                self.rows = sum(1 for _ in reader)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self._fs.makedirs(self.log_dir, exist_ok=True)
        super().log_hparams(params)

    def save(self) -> None:
        if self.metrics:
            self._fs.makedirs(self.log_dir, exist_ok=True)
            self.rows += len(self.metrics)
        super().save()


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger``, except that an existing ``metrics.csv`` in the run
    directory is appended to (new columns rewrite the header), never deleted, and the
    directory is created on the first write."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


ROWS_KEY = "csv_rows"  # checkpoint key: rows metrics.csv held when the checkpoint was written


def _read(writer: ExperimentWriter) -> tuple[list[str], list[dict[str, str]]]:
    with writer._fs.open(writer.metrics_file_path, "r", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _keep_rows(writer: _AppendingWriter, rows: int | None, step: int) -> int:
    """Cut ``writer``'s ``metrics.csv`` to its first ``rows`` rows (or, without a count, to
    the rows logged before ``step``); returns how many rows were dropped."""
    if not writer._fs.isfile(writer.metrics_file_path):
        return 0
    header, found = _read(writer)
    if rows is not None:
        kept = found[:rows]
    else:  # a checkpoint without a count: the row of step s is logged before step s + 1
        kept = [row for row in found if not row.get("step") or int(float(row["step"])) < step]
    if len(kept) < len(found):
        with writer._fs.open(writer.metrics_file_path, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(kept)
    writer.rows = len(kept)
    return len(found) - len(kept)


def _count_for(counts: dict[str, int], log_dir: str) -> int | None:
    """The recorded row count of the log in ``log_dir``: by its path, or (a run folder moved
    elsewhere) by its last two parts, ``<name>/<version>``; ``None`` when none is this log's."""
    if log_dir in counts:
        return counts[log_dir]
    same = [n for d, n in counts.items() if Path(d).parts[-2:] == Path(log_dir).parts[-2:]]
    return same[0] if len(same) == 1 else None


class MetricsFollowCheckpoint(Callback):
    """Keep ``metrics.csv`` in step with the checkpoints. Each save first writes out the rows
    logged so far and records how many rows belong to the state it saves; a resumed fit drops
    the rows after that count: they come from work the interruption lost, which the resumed
    run does (and logs) again, so the log matches the weights, row for row.

    A save at the end of a training batch (``every_n_train_steps``) or of a training epoch
    comes before Lightning logs that batch's or epoch's row, which the resumed run does not
    log again: that row is counted in."""

    def __init__(self) -> None:
        self._pending: str | None = None  # "batch" or "epoch": a save there precedes its row

    def on_train_batch_start(self, *args: Any) -> None:
        self._pending = None

    def on_train_batch_end(self, *args: Any) -> None:
        self._pending = "batch"

    def on_validation_start(self, *args: Any) -> None:
        self._pending = None

    def on_train_epoch_start(self, *args: Any) -> None:
        self._pending = None

    def on_train_epoch_end(self, *args: Any) -> None:
        self._pending = "epoch"

    def on_exception(self, *args: Any) -> None:
        self._pending = None

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()
                rows = logger.experiment.rows + self._row_to_come(trainer)
                checkpoint.setdefault(ROWS_KEY, {})[logger.log_dir] = rows

    def _row_to_come(self, trainer: Trainer) -> int:
        """1 when Lightning logs a row of the state being saved right after this save: the
        training batch's row after a save at its end, the epoch's row after a save at the
        end of a training epoch."""
        connector = trainer._logger_connector
        if self._pending is None or trainer.validating:
            return 0
        if self._pending == "batch":
            if trainer.fit_loop._should_accumulate() or not connector.should_update_logs:
                return 0
        return int(bool(connector.metrics["log"]))

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict) -> None:
        if not trainer.training or not trainer.is_global_zero:
            return
        counts = checkpoint.get(ROWS_KEY) or {}
        step = int(checkpoint.get("global_step", 0))
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                rows = _count_for(counts, logger.log_dir)
                if counts and rows is None:  # another run's checkpoint: this log is not its log
                    continue
                dropped = _keep_rows(logger.experiment, rows, step)
                if dropped:
                    path = logger.experiment.metrics_file_path
                    rank_zero_warn(f"{path}: {dropped} row(s) logged after the checkpoint (step {step}) "
                                   "were dropped; the resumed run logs those steps again")
