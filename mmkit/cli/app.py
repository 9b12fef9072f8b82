"""Lightning's CLI over the mmkit tasks and data modules: ``mmkit fit|validate|test|predict
-c configs/vit/mnist.yaml [-c configs/normalizer/multimax.yaml] [--model.network.normalizer
entmax15] [--ckpt_path last]``.

:class:`MMKitCLI` adds mmkit's defaults and checks; :func:`guarded` turns user errors into one
line on stderr and exit status 2 (``MMKIT_DEBUG=1`` shows the traceback). The ``mmkit``
command itself, with ``ablate`` and ``demo``, is :mod:`mmkit.entry`.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from .. import data, tasks  # noqa: F401  (registers the subclasses for short names)
from ..files import resolve_config_args
from ..normalizers import GRID_NORMALIZERS
from .callbacks import GracefulStop, Interrupted, NonFiniteGuard, PredictionsCSV, stop_requested
from .checkpointing import (
    AtomicModelCheckpoint,
    check_checkpoint,
    install_atomic_checkpoint_io,
)
from .errors import (
    ConfigError,
    check_config_files,
    check_output_dir,
    check_trainer_values,
    one_line,
    summarize_parse_error,
)
from .loggers import MetricsFollowCheckpoint
from .progress import default_progress_bar
from .provenance import ProvenanceRecord, definition, optimizer_spec, plain
from .quiet import quiet_lightning
from .resume import ExactResume, RecipeOnResume
from .runs import RunConfigRecord, check_run_dirs, resolve_checkpoint
from .summary import RunSummary
from .trainer_types import pin_int_first

TRAINER_DEFAULTS: dict[str, Any] = {
    "logger": {"class_path": "mmkit.cli.loggers.CSVLogger",
               "init_args": {"save_dir": "runs", "name": "mmkit"}},
}
DESCRIPTION = ("mmkit: train and evaluate models with a pluggable attention/output normalizer "
               f"({', '.join(GRID_NORMALIZERS)}). `mmkit ablate -c <grid.yaml>` runs "
               "a normalizer x seed grid; `mmkit demo` prints every normalizer on the MultiMax "
               "paper's Figure 1 input.")
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
               MisconfigurationException)  # Lightning's own checks of trainer and callback options
CKPT_PATH_HELP = {
    True: ("the checkpoint to resume from: a .ckpt file, or `last`: the newest run of this config "
           "(same run directory, checked against the config; in a requeued SLURM job its newer "
           "hpc_ckpt_*.ckpt). Without it a new run starts in a new version_N."),
    False: ("the checkpoint to evaluate: a .ckpt file (checked against the config) or `last` (the "
            "last.ckpt of the newest run of this config). Required unless --allow_untrained true."),
}
SPECIAL_CKPT = ("last", "best", "hpc", "registry")  # --ckpt_path values that are not file names
OUTPUT_OPTIONS = ("trainer.default_root_dir", "trainer.logger.init_args.save_dir", "checkpoint.dirpath")


class _OneLineParser(LightningArgumentParser):
    """Parse errors of the user-facing parsers raise :class:`ConfigError` with one line instead
    of printing the usage; jsonargparse's inner parsers (``exit_on_error=False``) are unchanged.
    Options must be spelled out: argparse's prefix matching would take a typo such as
    ``--trainer.max_step`` for ``--trainer.max_steps``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if self.exit_on_error and not os.environ.get("MMKIT_DEBUG"):
            raise ConfigError(summarize_parse_error(message)) from ex
        super().error(message, ex)


class MMKitCLI(LightningCLI):
    """LightningCLI with mmkit's defaults: a configurable ``ModelCheckpoint`` that
    keeps ``last.ckpt`` (so ``--ckpt_path last`` resumes), a progress bar (Rich in a terminal, plain
    lines otherwise), a one-line run summary, a CSV
    logger under ``runs/``, seed 0, ``predictions.csv`` from ``predict``, and exact
    mid-epoch resume (:class:`~mmkit.cli.resume.ExactResume`).

    Every checkpoint records the run's definition (:mod:`mmkit.cli.provenance`), and every
    checkpoint a command loads is checked against the config before anything is built or
    written; the run directory's ``config*.yaml`` files are append-only (:mod:`mmkit.cli.runs`).
    After a subcommand, ``results`` holds what the trainer returned (``trainer.test``'s
    metrics, for example)."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        quiet_lightning()
        pin_int_first(Trainer.__init__)  # `--trainer.limit_val_batches 1` is one batch, not 100%
        self.results: Any = None
        self.definition: dict[str, Any] = {}
        self.optimizer: dict[str, Any] | None = None
        super().__init__(
            LightningModule, LightningDataModule,
            save_config_callback=RunConfigRecord,
            subclass_mode_model=True, subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            auto_configure_optimizers=False,  # tasks build their own parameter groups
            parser_kwargs={"description": DESCRIPTION, "prog": "mmkit"},
            parser_class=_OneLineParser,
            args=args, run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(AtomicModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(NonFiniteGuard, "nan_guard")
        parser.add_argument("--allow_untrained", type=bool, default=False,
                            help="validate/test/predict without --ckpt_path: evaluate the randomly "
                                 "initialised model on purpose (otherwise an error)")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str,
                                   **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        for action in parser._actions:
            if action.dest == "ckpt_path":
                action.help = CKPT_PATH_HELP[subcommand == "fit"]
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args is None:  # configs/... also names the configs shipped with mmkit
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
            check_config_files(sys.argv[1:])
        elif isinstance(args, list):
            args = resolve_config_args(args)
            check_config_files(args)
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Make sure ``--ckpt_path`` names a readable checkpoint, or end with one clear line.
        Unlike Lightning's, the checkpoint's hyperparameters are not merged into the config:
        the config is what runs, and the checkpoint is read and checked against it in
        :meth:`before_instantiate_classes`."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if ckpt_path and Path(ckpt_path).is_dir():
            raise ValueError(f"--ckpt_path {ckpt_path} is a directory; pass a .ckpt file in it "
                             "(e.g. checkpoints/last.ckpt) or `--ckpt_path last`")
        if (ckpt_path and "://" not in ckpt_path and ckpt_path not in SPECIAL_CKPT
                and not ckpt_path.startswith("registry") and not Path(ckpt_path).exists()):
            raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist; check --ckpt_path, or use "
                                    "`--ckpt_path last` to resume the newest run of this config")

    def before_instantiate_classes(self) -> None:
        """Check that the output directories can be written (before anything is), then the
        checkpoint to load against the config's definition; ``--ckpt_path last`` continues
        the newest run of this config in place (or, in a requeued SLURM job, from its newer
        ``hpc_ckpt_*.ckpt``)."""
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is None:  # run=False: no checkpoint to check; the checkpoints still get a record
            self.definition, self.optimizer = definition(self.config), optimizer_spec(self.config)
            return
        for option in OUTPUT_OPTIONS:  # fail before anything is written
            try:
                value = config.get(option)
            except (AttributeError, KeyError, TypeError):  # e.g. a list of loggers
                value = None
            if isinstance(value, (str, os.PathLike)):
                check_output_dir(value, option)
        check_run_dirs(config)
        check_trainer_values(config.get("trainer"))
        self.definition, self.optimizer = definition(config), optimizer_spec(config)
        resolve_checkpoint(config, self.definition, self.subcommand, trust=_trusted(config),
                           optimizer=self.optimizer)

    def instantiate_classes(self) -> None:
        """As Lightning's, then the network's spec joins the task's hyperparameters, so that
        ``Task.load_from_checkpoint(path)`` rebuilds the network from the checkpoint alone."""
        super().instantiate_classes()
        network = self.definition.get("network")
        hparams = getattr(self.model, "hparams", None)
        if network is not None and hparams is not None and "_instantiator" in hparams:
            hparams["network"] = plain(network)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        given = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in given):
            bar = default_progress_bar()  # Rich on a terminal, plain lines in a file; MMKIT_PROGRESS
            if bar is None:  # MMKIT_PROGRESS=none
                config["enable_progress_bar"] = False
            else:
                callbacks = [*callbacks, bar]
        if not any(isinstance(c, RunSummary) for c in given):  # where it wrote, at the end
            callbacks = [*callbacks, RunSummary()]
        if self.subcommand == "predict":
            callbacks = [*callbacks, PredictionsCSV()]
        if not any(isinstance(c, ExactResume) for c in given):  # RNG states + data position
            callbacks = [*callbacks, ExactResume()]
        self.stop = GracefulStop()
        callbacks = [*callbacks, ProvenanceRecord(self.definition, self.optimizer),
                     RecipeOnResume(self.optimizer), MetricsFollowCheckpoint(), self.stop]
        trainer = super()._instantiate_trainer(config, callbacks)
        install_atomic_checkpoint_io(trainer)  # crash-safe saves, unless the user brought an IO
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """Check the checkpoint to load (a file, or SLURM's hpc checkpoint) against the model
        before Lightning reads it; run the subcommand and keep what it returns in ``results``."""
        config = self.config_init[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None and os.path.isfile(ckpt_path):
            check_checkpoint(ckpt_path, self.model, fitting=subcommand == "fit", trust=_trusted(config))
        run = getattr(self.trainer, subcommand)
        try:
            self.results = run(**self._prepare_subcommand_kwargs(subcommand))
        except SIGTERMException as err:  # Lightning's exit on SIGTERM would be status 0
            signum = stop_requested() or signal.SIGTERM
            raise Interrupted(signum, self.stop.checkpoint, self.stop.step) from err
        finally:
            self.stop.release()
            for callback in self.trainer.callbacks:  # Lightning skips teardown hooks after an error
                if isinstance(callback, RunConfigRecord):
                    callback.release()


class _Parsed(Exception):
    """Raised by :func:`check_arguments` once the arguments have parsed."""


def check_arguments(args: list[str]) -> None:
    """Parse ``args`` (a subcommand and its options) as ``mmkit`` does: config files, option
    names, types, the checkpoint named, and build nothing. Raises the error ``mmkit`` would
    show; ``mmkit ablate`` checks every cell this way before the first one runs."""

    class _ParseOnly(MMKitCLI):
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            raise _Parsed

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        _ParseOnly(args=args)
    except _Parsed:
        pass
    finally:
        sys.argv = argv


def _trusted(config: Namespace | None) -> bool:
    """``--weights_only false``: the user trusts the checkpoint's pickled objects."""
    return config is not None and config.get("weights_only") is False


def run(args: list[str]) -> Any:
    """Run ``mmkit <args>`` (``fit``, ``validate``, ``test`` or ``predict`` and its options) in
    this process, whatever ``sys.argv`` holds; return what the trainer returned."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return MMKitCLI(args=args).results
    finally:
        sys.argv = argv


def guarded(command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit status; a signal ends with its status and a user
    error (a bad value, a missing file, a config that does not parse) with one line on stderr
    and status 2, unless ``MMKIT_DEBUG`` is set."""
    try:
        return command()
    except Interrupted as err:
        sys.stderr.write(f"mmkit: {err}\n")
        return err.code
    except (*USER_ERRORS, ArgumentError, ConfigError) as err:
        if os.environ.get("MMKIT_DEBUG"):
            raise
        while isinstance(err.__cause__, (*USER_ERRORS, ArgumentError)):  # jsonargparse wraps ours; unwrap
            err = err.__cause__
        message = one_line(err)
        sys.stderr.write(f"mmkit: error: {message} (set MMKIT_DEBUG=1 for the traceback)\n")
        return 2
