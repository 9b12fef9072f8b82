"""Which run a command continues, and the run directory's record of what ran in it.

- :func:`resolve_checkpoint` turns ``--ckpt_path last`` into the newest ``last.ckpt`` of a run
  whose recorded definition (:mod:`mmkit.cli.provenance`) matches the config, checks an explicit
  checkpoint and SLURM's ``hpc_ckpt_*.ckpt`` the same way, and pins every logger to the
  continued run's version.
- :func:`share_version`: the loggers of a new run (e.g. CSV and TensorBoard) take one version.
- :class:`RunConfigRecord` keeps a run's record append-only: ``fit`` writes ``config.yaml`` once,
  a resumed fit adds ``config.resume-<k>.yaml``, and ``validate``/``test``/``predict`` write
  ``config.<stage>.yaml`` (``config.<stage>-<k>.yaml`` on later calls) beside it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from ..files import pid_alive
from .checkpointing import slurm_hpc_checkpoint
from .errors import check_output_dir
from .provenance import describe_mismatch, few, verify_checkpoint

VERSION_DIR = re.compile(r"^version_(\d+)$")


def logger_args(config: Namespace) -> list[Namespace]:
    """The ``init_args`` of every configured logger that writes under a ``save_dir``."""
    logger = config.trainer.get("logger")
    entries = logger if isinstance(logger, list) else [logger]
    found = []
    for entry in entries:
        init = entry.get("init_args") if isinstance(entry, Namespace) else None
        if isinstance(init, Namespace) and init.get("save_dir") is not None:
            found.append(init)
    return found


def _root(init: Namespace) -> Path:
    return Path(init.save_dir) / (init.get("name") or "")


def _version_dir(version: Any) -> str:
    return version if isinstance(version, str) else f"version_{version}"


def pin_version(config: Namespace, version: str) -> None:
    for init in logger_args(config):
        if "version" in init:
            init.version = version


def check_run_dirs(config: Namespace) -> None:
    """Every logger's run directory (``save_dir/name[/version]``) can be created: no part of it
    is a file. Checked before anything is written."""
    for init in logger_args(config):
        path = _root(init)
        if init.get("version") is not None:
            path = path / _version_dir(init.version)
        check_output_dir(path, "trainer.logger (save_dir/name/version)")


def share_version(config: Namespace) -> None:
    """Give the loggers of a new run one version: the first ``version_<n>`` free under all of
    their directories (each would otherwise count its own directory)."""
    inits = [init for init in logger_args(config) if "version" in init]
    if len(inits) < 2 or any(init.version is not None for init in inits):
        return
    taken = [int(m.group(1)) for init in inits if _root(init).is_dir()
             for p in _root(init).iterdir() if (m := VERSION_DIR.match(p.name))]
    pin_version(config, f"version_{max(taken, default=-1) + 1}")


def _candidates(config: Namespace) -> tuple[list[Path], str]:
    """The ``last.ckpt`` files ``--ckpt_path last`` may mean, newest first, and where they were
    looked for: ``checkpoint.dirpath``; the pinned version's run; else every run of the first
    logger's name."""
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    if dirpath:
        last = Path(dirpath) / "last.ckpt"
        return ([last] if last.is_file() else []), str(dirpath)
    inits = logger_args(config)
    if not inits:
        return [], "(no logger with a save_dir)"
    root = _root(inits[0])
    if inits[0].get("version") is not None:
        last = root / _version_dir(inits[0].version) / "checkpoints" / "last.ckpt"
        return ([last] if last.is_file() else []), str(last.parent.parent)
    found = sorted(root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    return found, str(root)


def resolve_checkpoint(config: Namespace, wanted: dict[str, Any], stage: str, trust: bool,
                       optimizer: dict[str, Any] | None = None) -> None:
    """Check the checkpoint the command will load against ``wanted`` (the config's definition)
    and, for a resumed fit, ``optimizer`` (its class), before anything is built or written;
    resolve ``last`` and ``hpc``. ``validate``, ``test`` and ``predict`` need a checkpoint unless
    ``allow_untrained`` is set. Raises ``ValueError`` (one line)."""
    fitting = stage == "fit"
    ckpt_path = config.get("ckpt_path")
    if ckpt_path is None and not fitting and not config.get("allow_untrained"):
        raise ValueError(f"`mmkit {stage}` needs the trained weights: pass --ckpt_path <file>, or "
                         "--ckpt_path last for the newest run of this config (--allow_untrained true "
                         "evaluates the randomly initialised model on purpose)")
    hpc = slurm_hpc_checkpoint(config.trainer.get("default_root_dir"))
    if ckpt_path == "last":
        _resolve_last(config, wanted, fitting, hpc)
    elif ckpt_path == "hpc" or (ckpt_path is None and fitting and hpc is not None):
        # (a fit under SLURM loads a hpc checkpoint by itself: name it, so that it is checked)
        if hpc is None:
            root = config.trainer.get("default_root_dir")
            raise ValueError(f"--ckpt_path hpc: no hpc_ckpt_*.ckpt in {root} (or not running under "
                             "SLURM); pass --ckpt_path <file> or last")
        config.ckpt_path = str(hpc)
    chosen = config.get("ckpt_path")
    if chosen is None:
        share_version(config)
    elif os.path.isfile(chosen):
        verify_checkpoint(chosen, wanted, trust, optimizer=optimizer if fitting else None)
    else:  # a remote URL, or Lightning's "best" / "registry": nothing here can read it first
        rank_zero_warn(f"--ckpt_path {chosen} is not a local file: mmkit cannot check it against this "
                       "config before Lightning loads it")


def _resolve_last(config: Namespace, wanted: dict[str, Any], fitting: bool, hpc: Path | None) -> None:
    """``last``: the newest matching candidate, or the newer SLURM hpc checkpoint (checked by
    the caller). Without one, ``fit`` starts a new run (with a warning when other runs are
    there), unless it would share an explicit ``checkpoint.dirpath`` with another run's
    checkpoints."""
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    candidates, where = _candidates(config)
    found, others = None, []
    for path in candidates:
        why = describe_mismatch(path, wanted)
        if why is None:
            found = path
            break
        others.append(f"{path if dirpath else path.parent.parent.name}: {why}")
    if hpc is not None and (found is None or hpc.stat().st_mtime >= found.stat().st_mtime):
        config.ckpt_path = str(hpc)  # a requeued SLURM job: the newer save wins
        return
    if found is not None:
        config.ckpt_path = str(found)
        if not dirpath:
            pin_version(config, found.parent.parent.name)
        return
    listing = f": {few(others)}" if others else " (none has a last.ckpt)"
    if not fitting:
        raise ValueError(f"--ckpt_path last: no run under {where} was trained with this config{listing}; "
                         "pass the config of the run you mean, or --ckpt_path <file>")
    if others and dirpath:
        raise ValueError(f"--ckpt_path last: checkpoint.dirpath {dirpath} holds another run's "
                         f"checkpoints{listing}; a new run there would overwrite them: choose another "
                         "checkpoint.dirpath")
    if others:
        rank_zero_warn(f"--ckpt_path last: no run under {where} was trained with this config{listing}; "
                       "starting a new run")
    config.ckpt_path = None


class RunLock:
    """``<run>/.lock`` while a process trains in the run directory: a second ``fit`` into the
    same run (e.g. two ``--ckpt_path last`` resumes) is refused with one line naming the
    holder. A lock whose process is gone (same host), or left by an earlier incarnation of this
    SLURM job (a requeue), is taken over."""

    NAME = ".lock"

    def __init__(self) -> None:
        self.path: Path | None = None

    @staticmethod
    def _me() -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "job": os.environ.get("SLURM_JOB_ID"),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self, log_dir: Path) -> str | None:
        """Take the lock; returns why not (the holder), or ``None``."""
        log_dir.mkdir(parents=True, exist_ok=True)
        path = log_dir / self.NAME
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder(path)
                if holder is not None:
                    return (f"{log_dir} is in use: pid {holder.get('pid')} on {holder.get('host')} has been "
                            f"training in it since {holder.get('since')}; wait for it to end, or, if that "
                            f"process is gone, remove {path}")
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._me(), f)
            self.path = path
            return None
        return f"cannot lock {log_dir}: {path} keeps reappearing; is another process starting there?"

    def _holder(self, path: Path) -> dict[str, Any] | None:
        """Who holds ``path``, or ``None`` when that process is gone."""
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a half-written or damaged lock: nobody
        me = self._me()
        if holder.get("job") and holder.get("job") == me["job"] and holder.get("pid") != me["pid"]:
            return None  # an earlier incarnation of this (requeued) SLURM job
        if holder.get("host") == me["host"] and not pid_alive(int(holder.get("pid", 0))):
            return None
        return holder

    def release(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class RunConfigRecord(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` with an append-only run directory (see the module
    docstring) that ``fit`` locks (:class:`RunLock`; :meth:`release` frees it). Nothing is
    written before the task's ``check_data()`` accepts the data and its ``prepare_network(stage)``
    (e.g. loading pretrained weights) has succeeded. A new fit into a directory
    that already holds another run's checkpoints is refused: two runs would share one
    directory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = RunLock()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        check_data = getattr(pl_module, "check_data", None)
        if callable(check_data):  # a model that does not fit its data: refused before any file
            check_data()
        prepare_network = getattr(pl_module, "prepare_network", None)
        if callable(prepare_network):  # e.g. pretrained weights that cannot be read: the same
            prepare_network(stage)
        if self.already_saved or not self.save_to_log_dir:
            return super().setup(trainer, pl_module, stage)
        log_dir = Path(trainer.log_dir)  # broadcast by Lightning
        name, refusal = None, None
        if trainer.is_global_zero:
            name, refusal = self._filename(log_dir, stage)
            if refusal is None and stage == "fit":
                refusal = self.lock.acquire(log_dir)
        name, refusal = trainer.strategy.broadcast((name, refusal))
        if refusal:
            raise ValueError(refusal)
        self.config_filename, self.overwrite = name, True
        super().setup(trainer, pl_module, stage)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.release()

    def release(self) -> None:
        self.lock.release()

    def _filename(self, log_dir: Path, stage: str) -> tuple[str, str | None]:
        if stage != "fit":
            return _free(log_dir, f"config.{getattr(stage, 'value', stage)}", "-"), None
        if not (log_dir / "config.yaml").is_file():
            return "config.yaml", None
        if self.config.get("ckpt_path"):
            return _free(log_dir, "config.resume", "-", first=1), None
        if any((log_dir / "checkpoints").glob("*.ckpt")):
            return "", (f"{log_dir} already holds a run with checkpoints; resume it with --ckpt_path last, "
                        "or start the new run elsewhere (another trainer.logger.init_args.version or name)")
        return "config.yaml", None  # an earlier start that saved no checkpoint


def _free(log_dir: Path, stem: str, sep: str, first: int | None = None) -> str:
    """``<stem>.yaml`` (or ``<stem><sep><first>.yaml``), else the first free ``<stem><sep><k>.yaml``."""
    k = first
    while True:
        name = f"{stem}.yaml" if k is None else f"{stem}{sep}{k}.yaml"
        if not (log_dir / name).exists():
            return name
        k = 2 if k is None else k + 1
