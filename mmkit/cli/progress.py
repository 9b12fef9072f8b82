"""What a run shows while it runs and when it ends.

- :class:`PlainProgressBar`: one line of text on stderr every ``interval`` seconds (and at
  the end of every epoch and validation): stage, epoch, step, the progress bar's metrics
  (the loss), throughput and ETA. Readable in a file: a SLURM ``.out``, an ablation cell's
  ``log.txt``, ``mmkit fit ... > log.txt 2>&1``.
- :func:`default_progress_bar`: Rich's bar when stdout is a terminal, the plain one
  otherwise; ``MMKIT_PROGRESS=rich|plain|none`` forces one (``auto``, the default, chooses)
  and ``MMKIT_PROGRESS_INTERVAL`` sets the plain bar's seconds between lines (default 30).
- :class:`~mmkit.cli.summary.RunSummary` (its own module): one line when a run ends.

It writes on the global rank zero only.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from .formatting import duration, metrics_text

PROGRESS_ENV = "MMKIT_PROGRESS"
INTERVAL_ENV = "MMKIT_PROGRESS_INTERVAL"
PROGRESS_CHOICES = ("auto", "rich", "plain", "none")
DEFAULT_INTERVAL = 30.0


def _batch_size(batch: Any) -> int | None:
    """The leading dimension of the first tensor in ``batch`` (a tensor, mapping or sequence)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = _batch_size(item)
            if size is not None:
                return size
    return None


def _total(batches: Any) -> float:
    """A loop's number of batches (a list per dataloader, or one number); ``inf`` when unknown."""
    if isinstance(batches, (list, tuple)):
        return float(sum(batches)) if batches else 0.0
    try:
        return float(batches)
    except (TypeError, ValueError):
        return math.inf


def _of(done: int, total: float) -> str:
    if math.isfinite(total) and total > 0:
        return f"{done}/{int(total)} ({100 * done / total:.0f}%)"
    return str(done)


class PlainProgressBar(ProgressBar):
    """Progress as plain lines on stderr, one every ``interval`` seconds and one at the end of
    every training epoch and every validation, test or predict run, e.g.::

        fit epoch 1/10 step 120/469 (26%) | train/loss=0.4312 | 4.12 steps/s 65.9 samples/s | \
epoch ETA 1m25s | run ETA 19m02s

    Throughput counts the training batches of this epoch (validation time excluded); the
    run's ETA needs ``max_epochs`` or ``max_steps`` and adds the last validation's time
    for each validation still to come.

    Args:
        interval: seconds between two lines while a loop runs (0: every batch).
    """

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__()
        if not interval >= 0:
            raise ValueError(f"the progress interval must be >= 0 seconds, got {interval}")
        self.interval = float(interval)
        self._enabled = True
        self._last_write = 0.0
        self._epoch_start = 0.0
        self._epoch_paused = 0.0  # validation time within this training epoch
        self._epoch_batches = 0  # training batches seen in this epoch, by this process
        self._last_batch_idx = -1
        self._batch_size: int | None = None
        self._eval_start = 0.0
        self._eval_batches = 0
        self._last_val_s: float | None = None

    # Lightning's switches
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._trainer is not None and self.trainer.is_global_zero

    def _write(self, line: str) -> None:
        self._last_write = time.monotonic()
        if not self.is_enabled:
            return
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def _due(self) -> bool:
        return time.monotonic() - self._last_write >= self.interval

    def _shown_metrics(self, trainer: Trainer, pl_module: LightningModule) -> str:
        try:
            return metrics_text(self.get_metrics(trainer, pl_module))
        except Exception:  # a metric that cannot be shown never stops training
            return ""

    # training
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_write = time.monotonic()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = time.monotonic()
        self._epoch_paused = 0.0
        self._epoch_batches = 0

    def _train_rate(self) -> float:
        elapsed = time.monotonic() - self._epoch_start - self._epoch_paused
        return self._epoch_batches / elapsed if elapsed > 0 and self._epoch_batches else 0.0

    def _epoch_text(self, trainer: Trainer) -> str:
        max_epochs = trainer.max_epochs
        of = f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{of}"

    @staticmethod
    def _epoch_total(trainer: Trainer, batch_idx: int) -> float:
        """This epoch's training batches: the loader's, or fewer where ``max_steps`` ends the
        run within the epoch (counted from the batch index, so that the total stays the same
        all epoch; Lightning's ``total_train_batches`` shrinks as steps are taken)."""
        total = _total(trainer.num_training_batches)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            k = max(1, trainer.accumulate_grad_batches)  # batches per optimizer step
            # the batches of the step in progress already seen do not count again
            left = max(0, trainer.max_steps - trainer.global_step) * k - (batch_idx + 1) % k
            total = min(total, batch_idx + 1 + max(0, left))
        return total

    def _run_eta(self, trainer: Trainer, batch_idx: int, rate: float) -> float | None:
        """Seconds left in the run: batches left over the training rate, plus a validation per
        epoch left (timed on the last one). ``None`` when the run's length is unknown."""
        if rate <= 0:
            return None
        total = self._epoch_total(trainer, batch_idx)
        left_in_epoch = total - (batch_idx + 1)
        etas = []
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs > 0 and math.isfinite(total):
            epochs_after = max(0, max_epochs - trainer.current_epoch - 1)
            batches = left_in_epoch + epochs_after * _total(trainer.num_training_batches)
            vals = (epochs_after + (1 if left_in_epoch > 0 else 0)) * (self._last_val_s or 0.0)
            etas.append(batches / rate + vals)
        max_steps = trainer.max_steps
        if max_steps is not None and max_steps > 0:
            steps_left = max(0, max_steps - trainer.global_step)
            etas.append(steps_left * max(1, trainer.accumulate_grad_batches) / rate)
        finite = [eta for eta in etas if math.isfinite(eta)]
        return min(finite) if finite else None

    def _train_line(self, trainer: Trainer, pl_module: LightningModule, batch_idx: int, end: bool) -> str:
        rate = self._train_rate()
        total = self._epoch_total(trainer, batch_idx)
        parts = [f"fit {self._epoch_text(trainer)} "
                 + (f"done: {batch_idx + 1} steps in {duration(time.monotonic() - self._epoch_start)}"
                    if end else f"step {_of(batch_idx + 1, total)}")]
        metrics = self._shown_metrics(trainer, pl_module)
        if metrics:
            parts.append(metrics)
        if rate > 0:
            speed = f"{rate:.3g} steps/s"
            if self._batch_size:
                speed += f" {rate * self._batch_size:.3g} samples/s"
            parts.append(speed)
        if not end and rate > 0 and math.isfinite(total):
            parts.append(f"epoch ETA {duration((total - batch_idx - 1) / rate)}")
        run_eta = self._run_eta(trainer, batch_idx, rate)
        if run_eta is not None and not (end and run_eta <= 0):
            parts.append(f"run ETA {duration(run_eta)}")
        return " | ".join(parts)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._epoch_batches += 1
        if self._batch_size is None:
            self._batch_size = _batch_size(batch)
        if self._due():
            self._write(self._train_line(trainer, pl_module, batch_idx, end=False))
        self._last_batch_idx = batch_idx

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_batches:
            self._write(self._train_line(trainer, pl_module, self._last_batch_idx, end=True))

    # evaluation
    def _eval_begin(self) -> None:
        self._eval_start = time.monotonic()
        self._eval_batches = 0

    def _eval_total(self, trainer: Trainer, stage: str) -> float:
        if stage == "val":
            sanity = trainer.sanity_checking
            return _total(trainer.num_sanity_val_batches if sanity else trainer.num_val_batches)
        return _total(trainer.num_test_batches if stage == "test" else trainer.num_predict_batches)

    def _eval_label(self, trainer: Trainer, stage: str) -> str:
        if stage == "val" and trainer.state.fn == TrainerFn.FITTING:
            return f"validation {self._epoch_text(trainer)}"
        return {"val": "validate", "test": "test", "predict": "predict"}[stage]

    def _eval_batch(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._eval_batches += 1
        if trainer.sanity_checking or not self._due():
            return
        elapsed = time.monotonic() - self._eval_start
        rate = self._eval_batches / elapsed if elapsed > 0 else 0.0
        total = self._eval_total(trainer, stage)
        parts = [f"{self._eval_label(trainer, stage)} batch {_of(self._eval_batches, total)}"]
        if rate > 0:
            parts.append(f"{rate:.3g} batches/s")
            if math.isfinite(total):
                parts.append(f"ETA {duration((total - self._eval_batches) / rate)}")
        self._write(" | ".join(parts))

    def _eval_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> float:
        elapsed = time.monotonic() - self._eval_start
        if trainer.sanity_checking:
            return elapsed
        label = self._eval_label(trainer, stage)
        parts = [f"{label} done: {self._eval_batches} batches in {duration(elapsed)}"]
        if stage != "predict":
            metrics = metrics_text(trainer.callback_metrics, (f"{stage}/",))
            if metrics:
                parts.append(metrics)
        self._write(" | ".join(parts))
        return elapsed

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_begin()

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(trainer, pl_module, "val")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        elapsed = self._eval_end(trainer, pl_module, "val")
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._epoch_paused += elapsed
            self._last_val_s = elapsed

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_begin()

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(trainer, pl_module, "test")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer, pl_module, "test")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_begin()

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch(trainer, pl_module, "predict")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end(trainer, pl_module, "predict")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no stream, or a closed one
        return False


def progress_choice() -> str:
    """``MMKIT_PROGRESS`` (``auto`` when unset); a value it cannot be is an error."""
    choice = os.environ.get(PROGRESS_ENV, "").strip().lower() or "auto"
    if choice not in PROGRESS_CHOICES:
        raise ValueError(f"{PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r} is not one of "
                         f"{', '.join(PROGRESS_CHOICES)}")
    return choice


def progress_interval() -> float:
    """``MMKIT_PROGRESS_INTERVAL`` seconds (default 30)."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"{INTERVAL_ENV}={text!r} must be a number of seconds >= 0")
    return value


def default_progress_bar() -> ProgressBar | None:
    """The progress bar of a run that names none: Rich's when stdout (where Rich draws) is a
    terminal, :class:`PlainProgressBar` (on stderr) otherwise, as when the output goes to a
    file. ``MMKIT_PROGRESS=rich|plain|none`` forces a choice (``none``: no bar at all)."""
    choice = progress_choice()
    if choice == "auto":
        choice = "rich" if _isatty(sys.stdout) else "plain"
    if choice == "rich":
        return RichProgressBar()
    if choice == "plain":
        return PlainProgressBar(interval=progress_interval())
    return None
