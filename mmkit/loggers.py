"""Loggers for the ``mmkit`` command.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it opens an existing run
directory, so resuming a run in place (``--ckpt_path last``) would silently drop
the metrics logged before the interruption. :class:`CSVLogger` appends instead.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # keep it; continue its columns
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger``, except that an existing ``metrics.csv`` in the run
    directory is appended to (new columns rewrite the header), never deleted."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
