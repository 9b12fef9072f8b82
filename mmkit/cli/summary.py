"""One line when a run ends (:class:`RunSummary`): the run directory, the last and best
checkpoints, and the val/ or test/ metrics. It goes where Lightning's own run messages go
(its rank-zero logger, on stderr), right after "`Trainer.fit` stopped: ...", so an
in-process caller's stderr holds only what it wrote."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from .formatting import count, metrics_text, number


class RunSummary(Callback):
    """One line (Lightning's rank-zero info logger: stderr) when ``fit``, ``validate`` or
    ``test`` ends, e.g.::

        mmkit: fit done after 1 epoch, 3 steps: run runs/mmkit/version_0 | last .../last.ckpt | \
best .../epoch=0-step=3.ckpt (val/acc1=0.2188) | val/acc1=0.2188 val/loss=2.197

    Nothing is written for a run that failed or was stopped by a signal (their error line
    says what is left), nor on ranks other than zero; the summary itself never fails a run.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._summarize(trainer, "fit")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self._summarize(trainer, "validate")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._summarize(trainer, "test")

    def _summarize(self, trainer: Trainer, stage: str) -> None:
        try:
            log_dir = trainer.log_dir  # on every rank: it is broadcast
        except Exception:
            log_dir = None
        if not trainer.is_global_zero:
            return
        try:
            line = summary_line(trainer, stage, log_dir)
        except Exception as err:  # never fail a finished run over its summary
            line = f"mmkit: {stage} done (no summary: {type(err).__name__}: {err})"
        rank_zero_info(line)


def summary_line(trainer: Trainer, stage: str, log_dir: str | None) -> str:
    """What :class:`RunSummary` writes for ``trainer`` after ``stage``."""
    how = "interrupted" if trainer.interrupted else "done"
    head = f"mmkit: {stage} {how}"
    if stage == "fit":
        head += f" after {count(trainer.current_epoch, 'epoch')}, {count(trainer.global_step, 'step')}"
    parts = [f"{head}: run {log_dir}" if log_dir else f"{head}: no run directory"]
    saver = trainer.checkpoint_callback
    if stage == "fit" and saver is not None:
        last = getattr(saver, "last_model_path", "") or ""
        best = getattr(saver, "best_model_path", "") or ""
        monitor = getattr(saver, "monitor", None)
        if last:
            parts.append(f"last {last}")
        if best and monitor:
            score = getattr(saver, "best_model_score", None)
            parts.append(f"best {best}" + (f" ({monitor}={number(score)})" if score is not None else ""))
        elif best and best != last:
            parts.append(f"checkpoint {best}")
        if not last and not best:
            parts.append("no checkpoint written")
    elif stage == "fit":
        parts.append("no checkpoint callback")
    elif trainer.ckpt_path:
        parts.append(f"checkpoint {trainer.ckpt_path}")
    prefixes = ("test/",) if stage == "test" else ("val/",)
    metrics = metrics_text(trainer.callback_metrics, prefixes)
    if metrics:
        parts.append(metrics)
    return " | ".join(parts)
