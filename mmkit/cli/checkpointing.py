"""Crash-safe checkpoints for the ``mmkit`` command.

- :class:`AtomicCheckpointIO` writes every checkpoint (``epoch=*.ckpt``, ``last.ckpt``,
  SLURM's ``hpc_ckpt_*.ckpt``) to a temporary file in the target directory, fsyncs it and
  renames it over the target with ``os.replace``: a kill during a save leaves the previous
  checkpoint whole (its temporary file is removed by the next save in that directory).
  :func:`install_atomic_checkpoint_io` puts it on a trainer whose strategy
  still uses Lightning's plain ``TorchCheckpointIO`` (a user's own ``CheckpointIO`` is kept).
- :class:`AtomicModelCheckpoint` also replaces the ``last.ckpt`` symlink atomically
  (``save_last: link``); with ``save_last: true`` last.ckpt is a full save, atomic through the IO.
- :func:`check_checkpoint` reads a checkpoint (memory-mapped) before Lightning does and turns
  a truncated, corrupt or foreign checkpoint into one clear ``ValueError``.
- :func:`slurm_hpc_checkpoint` finds the checkpoint a preempted SLURM job left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..files import (
    atomic_open,
    few,
    read_checkpoint,
    remove_stale_partials,
    temp_path,
)

HPC_NAME = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a half-written ``path``: write a temporary
    file next to it, fsync, ``os.replace``. On any error the temporary file is removed and
    the old ``path`` (if any) is untouched. A symlink at ``path`` is replaced, not followed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_partials(directory)  # what a save killed mid-way left behind
    try:
        with atomic_open(path, "wb") as f:
            torch.save(obj, f)
    except BaseException as err:
        cause = _os_error(err)
        if cause is not None:  # torch reports a failed write as "unexpected pos ..."
            raise CheckpointWriteError(path, cause) from err
        raise


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (disk full, file-size or quota limit, ...); the
    previous checkpoint at that path is intact."""

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        name = errno.errorcode.get(cause.errno or 0, "")
        hint = {errno.ENOSPC: "free space on that device", errno.EDQUOT: "free space in your quota",
                errno.EFBIG: "raise the file-size limit (ulimit -f)"}.get(cause.errno or 0, "check that path")
        super().__init__(f"could not write the checkpoint {path}: {cause.strerror or cause} ({name}); the "
                         f"previous checkpoint there is intact; {hint}, or set checkpoint.dirpath elsewhere, "
                         "then resume with --ckpt_path last")


def _os_error(err: BaseException | None) -> OSError | None:
    """The ``OSError`` behind ``err`` (itself, its cause or its context), if any."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with crash-safe local saves (temp file, fsync,
    ``os.replace``); remote paths (``s3://``...) keep Lightning's own transactional save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)


def install_atomic_checkpoint_io(trainer: Trainer) -> None:
    """Use :class:`AtomicCheckpointIO` unless the strategy already has a non-default IO
    (the user's plugin, XLA's, an async wrapper): those are kept as they are."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that protects a run from its first ``every_n_train_steps`` (or
    ``train_time_interval``) save on, and whose ``save_last: link`` swaps the ``last.ckpt``
    symlink in one ``os.replace`` (Lightning deletes it first, so a kill in between leaves no
    last.ckpt).

    Lightning defers a step- or time-triggered save until the monitored metric (``val/...``)
    exists, i.e. until the first validation, which may be thousands of steps away: until then
    nothing, not even ``last.ckpt``, is written. Here ``last.ckpt`` is written at that cadence
    whatever is monitored; the monitored top-k checkpoints wait for their metric."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        deferred, self._defer_save_until_validation = self._defer_save_until_validation, False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        now_deferred = self._defer_save_until_validation
        self._defer_save_until_validation = deferred or now_deferred
        if not (now_deferred and self.save_last) or self._should_skip_saving_checkpoint(trainer):
            return
        if self.monitor in self._monitor_candidates(trainer):  # deferred for a fresher metric only
            return
        kept = self._last_global_step_saved, self._last_checkpoint_saved
        self.save_last_now(trainer)
        # the deferred monitored save (and last.ckpt with it) still runs at the next validation
        self._last_global_step_saved, self._last_checkpoint_saved = kept

    def save_last_now(self, trainer: Trainer) -> str:
        """Write the current state as a full ``last.ckpt`` (never a link to an older top-k save)."""
        self.last_model_path = self.format_checkpoint_name(self._monitor_candidates(trainer),
                                                           self.CHECKPOINT_NAME_LAST)
        self._save_checkpoint(trainer, self.last_model_path)
        return self.last_model_path

    @staticmethod
    def _link_checkpoint(trainer: Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)
            temp = temp_path(os.path.dirname(os.path.abspath(linkpath)))
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), temp)
                os.replace(temp, linkpath)
            except OSError:  # no symlinks here (e.g. Windows without rights): an atomic copy
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                shutil.copyfile(filepath, temp)
                os.replace(temp, linkpath)
        trainer.strategy.barrier()


def slurm_hpc_checkpoint(root: str | os.PathLike | None) -> Path | None:
    """The newest ``hpc_ckpt_<n>.ckpt`` that Lightning's SLURM requeue handler saved in
    ``root`` (the trainer's ``default_root_dir``, default the working directory), or ``None``
    when not running under SLURM or there is none."""
    if not SLURMEnvironment.detect():
        return None
    folder = Path(root if root is not None else os.getcwd())
    found = [(int(m.group(1)), p) for p in (folder.glob("hpc_ckpt_*.ckpt") if folder.is_dir() else [])
             if (m := HPC_NAME.match(p.name)) and p.is_file()]
    return max(found)[1] if found else None


def _shape(value: Any) -> str:
    return str(list(value.shape)) if hasattr(value, "shape") else type(value).__name__


def config_hint(path: Path) -> str:
    """Where the config that wrote ``path`` probably lives (``<run>/checkpoints/x.ckpt``)."""
    saved = path.resolve().parent.parent / "config.yaml"
    if path.parent.name == "checkpoints" and saved.is_file():
        return f"rerun with the config it was trained with (`-c {saved}`)"
    return "rerun with the config it was trained with"


def _likely_reason(names: list[str]) -> str:
    if any(re.search(r"(^|\.)(ranges|ts)$|normalizer", n) for n in names):
        return "it was probably trained with a different normalizer (e.g. multimax vs softmax)"
    return "it was probably saved from a different model or config (size, preset, vocabulary, ...)"


def check_checkpoint(path: str | os.PathLike, model: LightningModule, fitting: bool = False,
                     trust: bool = False) -> None:
    """Raise one clear ``ValueError`` unless ``path`` is a readable Lightning checkpoint whose
    ``state_dict`` matches ``model`` (same keys and shapes; keys are only required to match
    when the model loads strictly). ``fitting`` also requires the optimizer state needed to resume."""
    ckpt = read_checkpoint(path, trust=trust)
    try:
        saved: dict[str, Any] = ckpt["state_dict"]
        expected = model.state_dict()
        strict = getattr(model, "strict_loading", True)
        missing = [k for k in expected if k not in saved] if strict else []
        unexpected = [k for k in saved if k not in expected] if strict else []
        mismatched = [f"{k} {_shape(saved[k])} vs {_shape(v)}" for k, v in expected.items()
                      if k in saved and hasattr(v, "shape") and hasattr(saved[k], "shape")
                      and tuple(saved[k].shape) != tuple(v.shape)]
        weights_only = "optimizer_states" not in ckpt or "loops" not in ckpt
    finally:
        del ckpt  # drop the memory map before Lightning reads the file
    problems = []
    if missing:
        problems.append(f"missing keys {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch (checkpoint vs model) {few(mismatched)}")
    if problems:
        reason = _likely_reason(missing + unexpected + mismatched)
        raise ValueError(f"checkpoint {path} does not fit this model: {'; '.join(problems)}; {reason}: "
                         f"{config_hint(Path(path))}, or pass a checkpoint of this model")
    if fitting and weights_only:
        raise ValueError(f"checkpoint {path} holds model weights only (saved with save_weights_only), so "
                         "`fit` cannot resume from it; use validate/test/predict, or a full checkpoint")
