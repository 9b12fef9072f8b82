"""Callbacks that the ``mmkit`` command adds by default.

- :class:`PredictionsCSV`: ``mmkit predict`` results as ``predictions.csv``.
- :class:`NonFiniteGuard`: stop training with one clear line when the loss (or a weight)
  turns NaN/Inf, before a checkpoint of the broken weights is written.
- :class:`GracefulStop`: SIGTERM (a scheduler's preemption) and a first Ctrl-C stop training
  at the next batch boundary, write ``last.ckpt`` there, and end the command with
  :class:`Interrupted` (exit status 143 or 130), never with status 0.
"""

from __future__ import annotations

import csv
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..files import atomic_open, read_checkpoint, write_text_atomic

SHOWN = 3  # how many non-finite parameters a message names


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
        to_rows = getattr(pl_module, "prediction_rows", None) or (lambda output: output)
        rows = [{"index": i, **row} for i, row in
                enumerate(row for output in predictions for row in to_rows(output))]
        with atomic_open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["index"])
            writer.writeheader()
            writer.writerows(rows)
        column = getattr(pl_module, "prediction_text_column", None)
        if column is not None:  # e.g. translations: one output line per input line
            write_text_atomic(self.path.with_suffix(".txt"), "".join(f"{row[column]}\n" for row in rows))


class NonFiniteTrainingError(ValueError):
    """Training produced a NaN/Inf loss or weight (a user-facing error: one line, exit 2)."""


class NonFiniteGuard(Callback):
    """Check the training loss (and, with ``check_weights``, every parameter) for NaN/Inf
    after each ``check_every_n_steps``-th optimizer step.

    With ``action: raise`` (the default) training ends with a :class:`NonFiniteTrainingError`
    that names the global step, so ``mmkit fit`` prints one line and exits with status 2.
    The check runs in ``on_train_batch_end``, before Lightning's ``ModelCheckpoint`` (always
    ordered last) can save that step, so the broken weights are never checkpointed and
    ``last.ckpt`` keeps the last good state. ``action: warn`` only warns (once) and goes on;
    ``check_every_n_steps: 0`` turns the guard off. Under DDP the decision is shared by all
    ranks, so they stop together.

    Args:
        check_every_n_steps: check after every n-th optimizer step (0: never).
        action: ``raise`` (stop with an error) or ``warn``.
        check_weights: also check the parameters (catches an update that overflowed
            although its loss was still finite; costs one pass over the weights).
    """

    def __init__(self, check_every_n_steps: int = 1, action: Literal["raise", "warn"] = "raise",
                 check_weights: bool = True) -> None:
        if check_every_n_steps < 0:
            raise ValueError(f"nan_guard.check_every_n_steps must be >= 0 (0 turns the guard off), "
                             f"got {check_every_n_steps}")
        if action not in ("raise", "warn"):
            raise ValueError(f"nan_guard.action must be 'raise' or 'warn', got {action!r}")
        self.check_every_n_steps, self.action, self.check_weights = check_every_n_steps, action, check_weights
        self._warned = False

    def _problems(self, pl_module: LightningModule, outputs: Any) -> list[str]:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        problems = []
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            problems.append(f"the train loss is {loss.detach().float().mean().item()}")
        if self.check_weights:
            named = [(n, p) for n, p in pl_module.named_parameters() if p.numel()]
            if named:
                finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])  # [P]
                if not bool(finite.all()):  # one device sync for all parameters
                    bad = [n for (n, _), ok in zip(named, finite.tolist()) if not ok]
                    more = f" (+{len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
                    problems.append(f"parameters {', '.join(bad[:SHOWN])}{more} hold NaN/Inf")
        return problems

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        every = self.check_every_n_steps
        if every == 0 or trainer.global_step % every:
            return
        self._check(trainer, self._problems(pl_module, outputs), f"batch {batch_idx}")

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """Every save is checked, whatever ``check_every_n_steps``: a checkpoint never holds
        NaN/Inf weights (the error comes before the file is written)."""
        if self.check_every_n_steps and self.check_weights:
            self._check(trainer, self._problems(pl_module, None), "while saving a checkpoint")

    def _check(self, trainer: Trainer, problems: list[str], where: str) -> None:
        if not trainer.strategy.reduce_boolean_decision(bool(problems), all=False):
            return
        what = "; ".join(problems) or "another rank saw a NaN/Inf loss or weight"
        diverged = (f"training diverged at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
                    f"{where}): {what}")
        if self.action == "warn":
            if not self._warned:
                rank_zero_warn(f"{diverged} (nan_guard.action=warn: going on)")
                self._warned = True
            return
        raise NonFiniteTrainingError(
            f"{diverged}; {_kept_checkpoint(trainer)}; lower the learning rate, set "
            "trainer.gradient_clip_val, or use 32-true precision (nan_guard.action=warn only warns, "
            "nan_guard.check_every_n_steps=0 turns the check off)")


def _kept_checkpoint(trainer: Trainer) -> str:
    """What the user can resume from after the guard stopped training (saves are checked, so
    whatever ``last.ckpt`` holds is finite)."""
    saver = trainer.checkpoint_callback
    last = getattr(saver, "last_model_path", "") or ""
    if not last or not os.path.isfile(last):
        return "no checkpoint was written before it (none to resume from)"
    try:
        step = int(read_checkpoint(last)["global_step"])
    except Exception:  # unreadable: still name the file
        return f"no checkpoint of this step was written; the last one is {last}"
    return f"no checkpoint of this step was written; {last} (step {step}) holds the last good state"


_STOP: dict[str, int | None] = {"signum": None}  # the signal that asked this process to stop


def request_stop(signum: int) -> None:
    if _STOP["signum"] is None:
        _STOP["signum"] = signum


def stop_requested() -> int | None:
    """The signal (SIGINT or SIGTERM) that asked this process to stop, if any."""
    return _STOP["signum"]


def clear_stop() -> None:
    _STOP["signum"] = None


class Interrupted(Exception):
    """A run stopped by a signal; ``code`` is the exit status (128 + the signal number) and
    ``checkpoint`` the ``last.ckpt`` that holds its state (``None``: none was written)."""

    def __init__(self, signum: int, checkpoint: str | None, step: int | None) -> None:
        name = signal.Signals(signum).name
        at = f"at step {step}" if step is not None else "from before the interruption"
        where = (f"{checkpoint} {at} holds its state; resume with --ckpt_path last" if checkpoint
                 else "no checkpoint was written")
        super().__init__(f"interrupted by {name}: {where}")
        self.signum, self.code, self.checkpoint = signum, 128 + signum, checkpoint


class GracefulStop(Callback):
    """Stop ``fit`` cleanly on SIGTERM or a first Ctrl-C: Lightning ends the loop at the next
    batch boundary, where this callback writes ``last.ckpt`` (the training state is whole
    there; a stop during validation keeps the previous ``last.ckpt``). A second Ctrl-C
    interrupts at once. The command then ends with :class:`Interrupted`: exit status 143
    (SIGTERM) or 130 (SIGINT)."""

    def __init__(self) -> None:
        self.checkpoint: str | None = None
        self.step: int | None = None
        self._found: Any = None  # SIGINT's handler before fit

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        clear_stop()
        self.checkpoint, self.step = None, None
        if stage == "fit" and self._found is None and threading.current_thread() is threading.main_thread():
            self._found = signal.signal(signal.SIGINT, self._on_sigint(trainer))

    def _on_sigint(self, trainer: Trainer):
        def handler(signum: int, frame: Any) -> None:
            if stop_requested() is not None:  # the second Ctrl-C: now
                signal.default_int_handler(signum, frame)
            request_stop(signum)
            trainer._signal_connector.received_sigterm = True  # Lightning's loops stop at the batch end
        return handler

    def release(self) -> None:
        """Give SIGINT back the handler it had before ``fit`` (again after Lightning's own
        teardown, which puts back the handlers it found, ours included)."""
        if self._found is not None:
            signal.signal(signal.SIGINT, self._found)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.release()  # Lightning calls no teardown hooks after an exception
        if not isinstance(exception, SIGTERMException):
            return
        request_stop(signal.SIGTERM)  # unless a Ctrl-C came first
        saver = trainer.checkpoint_callback
        if trainer.state.fn != TrainerFn.FITTING or saver is None:
            return
        if not trainer.validating and hasattr(saver, "save_last_now"):
            self.checkpoint, self.step = saver.save_last_now(trainer), trainer.global_step
        else:
            self.checkpoint = getattr(saver, "last_model_path", None) or None
