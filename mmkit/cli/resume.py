"""Exact resume: a run killed at any step and resumed with ``--ckpt_path last`` ends with the
same weights and metrics as the uninterrupted run (bit-identical on the CPU).

Lightning's checkpoints already hold the weights, the optimizer, the LR schedulers and the
loop progress. :class:`ExactResume` (installed by ``mmkit fit``) adds what they lack:

- **RNG states.** The CPU (and CUDA) torch generators, numpy's and Python's ``random``
  are saved with every checkpoint, one set per rank, and restored in ``on_train_start``,
  after seeding, so dropout, drop-path and MixUp continue the uninterrupted stream.
  Data loading draws nothing from them (:class:`mmkit.data.sharding.SeededSamples`).
- **Data position.** Lightning restores ``batch_progress`` but re-reads a plain train
  loader from its start; ``on_train_start`` tells each train loader to skip the batches
  of the current epoch it has already trained on: any sampler, batch sampler or
  dataset with a ``skip_batches(batches, batch_size)`` method
  (:class:`~mmkit.data.sharding.ResumableSampler`, :class:`~mmkit.data.lm.StreamWindows`).
  The loader's iterator is then created again, after the sampler's epoch is set, so
  worker processes see both.
- **Epoch boundary.** A checkpoint of an epoch's last batch is written before that epoch's
  validation. Lightning 2.6 would skip the validation (its metrics would be missing from
  the log) and, still flagged "mid-epoch", the next epoch's ``on_train_epoch_start``
  hooks and progress counts. ``on_train_start`` runs the validation when Lightning's own
  rule says it was due (with the finished epoch's number), then starts the next epoch
  as a normal epoch. A checkpoint written after the validation does not repeat it.

The LM task saves its Transformer-XL memory itself (``checkpoint["mmkit_mems"]``), and the
tokenizer is reloaded from the run directory (:mod:`mmkit.data.lm`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer import call
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .provenance import recorded_optimizer


def rng_states() -> dict[str, Any]:
    """This process's RNG states: torch CPU, CUDA (when initialized), numpy and ``random``,
    as tensors and numbers only (Lightning loads checkpoints with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (a CUDA state only where CUDA is in use)."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _all_ranks(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``states`` (rank order); just ``[states]`` outside distributed runs."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [states]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, states)
    return gathered


def batches_to_skip(trainer: Trainer) -> int:
    """How many batches of the current epoch a resumed run has already trained on: the
    restored ``batch_progress`` when the run restarted mid-epoch, else 0 (at ``on_train_start``,
    before the epoch loop moves its counters)."""
    fit_loop = trainer.fit_loop
    if not fit_loop.restarted_mid_epoch:
        return 0
    ready = fit_loop.epoch_loop.batch_progress.current.ready
    total = trainer.num_training_batches
    return 0 if ready >= total else ready  # a checkpoint of the epoch's last batch: next epoch


class ExactResume(Callback):
    """Save the RNG states with every checkpoint; on resume restore them and skip the
    batches of the current epoch that were already trained on (see the module docstring).

    Args:
        warn_unskippable: warn when a run resumes mid-epoch but a train loader has no
            ``skip_batches`` (it would repeat the epoch's first batches).
    """

    def __init__(self, warn_unskippable: bool = True) -> None:
        self.warn_unskippable = warn_unskippable
        self._restored: list[dict[str, Any]] | None = None
        self._saved_epoch: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _all_ranks(rng_states())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict.get("rng")

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._saved_epoch = checkpoint.get("epoch")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._restored is None:  # a fresh run
            return
        saved, self._restored = self._restored, None
        self._reposition_loaders(trainer, batches_to_skip(trainer))
        fit_loop = trainer.fit_loop
        at_epoch_end = fit_loop.restarted_mid_epoch and fit_loop.epoch_loop.batch_progress.is_last_batch
        # Saved on the epoch's last batch, before that epoch's validation: is it due? Lightning
        # has already counted that epoch as completed; the check and the validation see the
        # finished epoch's number, as in the uninterrupted run.
        finished = self._saved_epoch if self._saved_epoch is not None else trainer.current_epoch - 1
        with _at_epoch(trainer, finished):
            validate = at_epoch_end and _validation_due(trainer)
        if at_epoch_end:
            # Lightning moves on to the next epoch but, still flagged "mid-epoch", would skip
            # its on_train_epoch_start hooks and its progress counts, so a later checkpoint
            # would replay that epoch. Start it as a new epoch.
            fit_loop.reset_restart_stage()
        if trainer.global_rank < len(saved):
            set_rng_states(saved[trainer.global_rank])
        else:
            rank_zero_warn(f"the checkpoint holds RNG states of {len(saved)} processes, this run has "
                           f"{trainer.world_size}; ranks beyond them keep their seeded RNG (not exact)")
        if validate:  # Lightning would skip it: its metrics would be missing from the log
            with _at_epoch(trainer, finished):
                _run_validation(trainer)
        if at_epoch_end:  # and the epoch's end: its hooks and epoch-level training metrics
            with _at_epoch(trainer, finished):
                _end_epoch(trainer)

    def _reposition_loaders(self, trainer: Trainer, skip: int) -> None:
        fit_loop = trainer.fit_loop
        combined = fit_loop._combined_loader
        if combined is None:
            return
        missing = []
        for loader in combined.flattened:
            for owner in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
                if hasattr(owner, "set_epoch"):  # Lightning sets it later: too late for workers
                    owner.set_epoch(trainer.current_epoch)
            if skip and not _skip(loader, skip):
                missing.append(type(getattr(loader, "dataset", loader)).__name__)
        if missing and self.warn_unskippable:
            rank_zero_warn(f"resuming mid-epoch, but the train loader(s) of {', '.join(missing)} cannot "
                           "skip the batches already seen (no skip_batches); the epoch's first "
                           f"{skip} batches are repeated")
        if fit_loop._data_fetcher is not None:
            iter(fit_loop._data_fetcher)  # new loader iterators that see the skip and the epoch


def _validation_due(trainer: Trainer) -> bool:
    """Whether the epoch loop, restored on its last batch, still owes that batch's validation
    (Lightning's own rule, evaluated before its loops reset their counters)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    should_check = getattr(epoch_loop, "_should_check_val_fx", None)
    if should_check is None:  # another Lightning: keep its behaviour (no validation)
        return False
    return bool(should_check(trainer.fit_loop._data_fetcher))


@contextmanager
def _at_epoch(trainer: Trainer, epoch: int) -> Iterator[None]:
    """Inside the block the epoch progress reads as during epoch ``epoch``'s validation:
    ``trainer.current_epoch`` (completed epochs) and the sampler epoch (processed)."""
    progress = trainer.fit_loop.epoch_progress.current
    before = progress.completed, progress.processed
    progress.completed = progress.processed = epoch
    try:
        yield
    finally:
        progress.completed, progress.processed = before


def _run_validation(trainer: Trainer) -> None:
    """Run the validation loop now, as the epoch loop runs it after a training batch: from
    its first batch (the restored loop would resume an earlier validation's progress)."""
    val_loop = trainer.fit_loop.epoch_loop.val_loop
    val_loop.restarting = False
    trainer.validating = True
    val_loop.run()
    trainer.training = True


def _end_epoch(trainer: Trainer) -> None:
    """The end of the finished epoch, which Lightning skips when it restarts from the epoch's
    last batch: the train-epoch-end hooks, then the epoch-level training metrics, logged at
    the epoch's last step, as the fit loop does."""
    connector = trainer._logger_connector
    connector.epoch_end_reached()
    call._call_callback_hooks(trainer, "on_train_epoch_end", monitoring_callbacks=False)
    call._call_lightning_module_hook(trainer, "on_train_epoch_end")
    call._call_callback_hooks(trainer, "on_train_epoch_end", monitoring_callbacks=True)
    connector.on_epoch_end()
    # The restored step counter still reads the epoch's last step (Lightning adds the one it
    # saved before incrementing when its epoch loop restarts), where the fit loop logs them.
    connector.update_train_epoch_metrics()


def _skip(loader: Any, batches: int) -> bool:
    """Ask the first of the loader's batch sampler, sampler and dataset that can to skip."""
    batch_size = getattr(loader, "batch_size", None)
    for owner in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None),
                  getattr(loader, "dataset", None), loader):
        if callable(getattr(owner, "skip_batches", None)):
            owner.skip_batches(batches, None if owner is getattr(loader, "batch_sampler", None)
                               else batch_size)
            return True
    return False


class RecipeOnResume(Callback):
    """A resumed ``fit`` trains with the optimizer hyperparameters of its config, not only the
    ones its checkpoint restored (Lightning restores the old learning rate, silently ignoring a
    new one). Every init argument of the optimizer that differs from the checkpoint's recorded
    one is applied on top of the restored state: the learning rate by scaling each group's
    rate and the schedulers' ``base_lrs`` (so the schedule continues from the same step at
    the new scale), any other (``weight_decay``, ``betas``, ``momentum``, ...) in the groups
    that held the old value (a no-decay group keeps its 0). The optimizer class cannot change
    (:func:`mmkit.cli.provenance.verify_checkpoint` refuses it before the run starts).

    Args:
        optimizer: the config's optimizer spec (``class_path`` and ``init_args``).
    """

    def __init__(self, optimizer: dict[str, Any] | None) -> None:
        self.optimizer = optimizer
        self._restored: dict[str, Any] | None = None
        self.changes: dict[str, tuple[Any, Any]] = {}

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._restored = recorded_optimizer(checkpoint)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        old, self._restored = self._restored, None
        if not old or not self.optimizer:
            return
        before, after = old.get("init_args") or {}, self.optimizer.get("init_args") or {}
        self.changes = {k: (before[k], v) for k, v in after.items() if k in before and before[k] != v}
        if not self.changes:
            return
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                _apply(group, self.changes)
        if "lr" in self.changes:
            old_lr, new_lr = self.changes["lr"]
            for config in trainer.lr_scheduler_configs:
                if hasattr(config.scheduler, "base_lrs"):
                    bases = config.scheduler.base_lrs
                    config.scheduler.base_lrs = [_rescale(b, old_lr, new_lr) for b in bases]
        shown = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in self.changes.items())
        rank_zero_info(f"resumed with the config's optimizer settings: {shown}")


def _rescale(value: float, old: float, new: float) -> float:
    return value * (new / old) if old else new


def _apply(group: dict[str, Any], changes: dict[str, tuple[Any, Any]]) -> None:
    for key, (old, new) in changes.items():
        if key == "lr":
            for name in ("lr", "initial_lr"):
                if name in group:
                    group[name] = _rescale(group[name], old, new)
        elif key in group and _same(group[key], old):
            group[key] = tuple(new) if isinstance(group[key], tuple) else new


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return list(a) == list(b)
    return a == b
