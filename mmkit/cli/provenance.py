"""What a checkpoint is, and whether it is what the config asks for.

A run's **definition** is the part of its config that decides which model its weights belong to:

- ``task``: the LightningModule class (``model.class_path``);
- ``network``: the network's class path and every init argument; normalizers are compared by
  what they build (:func:`mmkit.normalizers.describe_normalizer`), so ``multimax`` and
  ``{class_path: mmkit.normalizers.MultiMax}`` are the same normalizer;
- ``data``: the DataModule class and the arguments that shape the model's inputs and
  outputs (:data:`DATA_KEYS`: dataset or corpus, image size, tokenizer kind, vocabulary
  size, languages). The tokenizer itself is checked by the data module on load.

Everything else may differ between the run that wrote a checkpoint and a run that loads it:
the trainer (steps, epochs, devices, precision), optimizer and scheduler, the task's own
arguments (label smoothing, warmup, beam size), batch sizes, data locations, seeds, loggers
and callbacks.

``mmkit`` writes the definition into every checkpoint: ``checkpoint["mmkit"]`` (with the mmkit
version and the last validation metrics; :class:`ProvenanceRecord`), and the network spec
into the task's hyperparameters, so ``Task.load_from_checkpoint(path)`` rebuilds the model.
:func:`verify_checkpoint` refuses, with one line naming both sides, a checkpoint whose recorded
definition differs from the config's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from .. import __version__
from ..files import read_checkpoint
from ..normalizers import describe_normalizer
from .checkpointing import config_hint

RECORD_KEY = "mmkit"
DATA_KEYS = ("dataset", "corpus", "img_size", "tokenizer", "vocab_size", "src_lang", "tgt_lang")
SHOWN = 4  # how many differences a message names
_UNSET = object()
#: Network arguments that only shape how a trained model is evaluated (Transformer-XL's
#: evaluation memory, clamping and window): they may differ between a checkpoint and the
#: config that evaluates or resumes it.
EVALUATION_ONLY = frozenset({"eval_mem_len", "eval_clamp_len", "eval_same_length"})


def plain(value: Any) -> Any:
    """A config value as plain JSON data (jsonargparse namespaces become dicts)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    return json.loads(json.dumps(value, default=str))


def data_identity(class_path: str | None, init_args: dict[str, Any]) -> dict[str, Any]:
    return {"class_path": class_path, **{k: init_args[k] for k in DATA_KEYS if k in init_args}}


def definition(config: Namespace) -> dict[str, Any]:
    """The definition (see the module docstring) of a parsed subcommand config."""
    model = plain(config.get("model")) or {}
    data = plain(config.get("data")) or {}
    return {"task": model.get("class_path"),
            "network": (model.get("init_args") or {}).get("network"),
            "data": data_identity(data.get("class_path"), data.get("init_args") or {}) if data else None}


def recorded_definition(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The definition a checkpoint records: ``checkpoint["mmkit"]``, or, for a weights-only
    save, the task's and data module's hyperparameters; ``None`` for a checkpoint that
    records none (written outside ``mmkit fit``, or by an older mmkit)."""
    record = ckpt.get(RECORD_KEY)
    if isinstance(record, dict) and isinstance(record.get("definition"), dict):
        found = record["definition"]
        return found if found.get("task") or found.get("network") else None
    hparams = ckpt.get("hyper_parameters") or {}
    if "network" not in hparams:
        return None
    data = ckpt.get("datamodule_hyper_parameters") or {}
    return {"task": hparams.get("_class_path"), "network": hparams["network"],
            "data": data_identity(data.get("_class_path"), data) if data else None}


def _canonical(value: Any, key: str = "") -> Any:
    """Normalizer specs as what they build; everything else as it is."""
    if key.endswith("normalizer") and isinstance(value, (str, dict)):
        try:
            return describe_normalizer(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _canonical(v, k) for k, v in value.items()}
    return value


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys (``init_args`` levels dropped); a described normalizer shows as its class."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            if k == "class":
                out[prefix] = str(v).rpartition(".")[2]
            elif k == "init_args":
                _flatten(v, prefix, out)
            else:
                _flatten(v, f"{prefix}.{k}" if prefix else k, out)
    else:
        out[prefix] = value
    return out


def _show(value: Any) -> str:
    if value is _UNSET:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value)


def differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``"<field>: checkpoint <a> vs config <b>"`` for every field of the definition that
    differs, except the network's :data:`EVALUATION_ONLY` arguments. A section the
    checkpoint does not record (e.g. data without hyperparameters) is not compared."""
    out = []
    for section in ("task", "network", "data"):
        if recorded.get(section) is None:
            continue
        a = _flatten(_canonical(recorded.get(section), section), section, {})
        b = _flatten(_canonical(wanted.get(section), section), section, {})
        changed: list[str] = []
        for key in [*a, *(k for k in b if k not in a)]:
            if section == "network" and key.rpartition(".")[2] in EVALUATION_ONLY:
                continue
            left, right = a.get(key, _UNSET), b.get(key, _UNSET)
            if left != right and not any(key.startswith(f"{p}.") for p in changed):
                changed.append(key)  # a normalizer's class: its arguments need not be listed
                out.append(f"{key}: checkpoint {_show(left)} vs config {_show(right)}")
    return out


def few(items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more


def optimizer_spec(config: Namespace) -> dict[str, Any] | None:
    """The config's ``model.init_args.optimizer`` (class path and init args), if any."""
    init = (plain(config.get("model")) or {}).get("init_args") or {}
    optimizer = init.get("optimizer")
    return optimizer if isinstance(optimizer, dict) else None


def recorded_optimizer(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    record = ckpt.get(RECORD_KEY)
    return ((record.get("recipe") or {}).get("optimizer") if isinstance(record, dict) else None) or None


def read_definition(path: str | Path, trust: bool = False) -> dict[str, Any] | None:
    ckpt = read_checkpoint(path, trust=trust)
    try:
        return recorded_definition(ckpt)
    finally:
        del ckpt  # drop the memory map


def verify_checkpoint(path: str | Path, wanted: dict[str, Any], trust: bool = False,
                      optimizer: dict[str, Any] | None = None) -> None:
    """Raise one ``ValueError`` when the checkpoint at ``path`` records a definition other
    than ``wanted`` or, given the config's ``optimizer`` (a resumed fit), another optimizer
    class; warn when it records no definition (it is then checked only by its weights)."""
    ckpt = read_checkpoint(path, trust=trust)
    try:
        recorded, old = recorded_definition(ckpt), recorded_optimizer(ckpt)
    finally:
        del ckpt  # drop the memory map
    if recorded is None:
        rank_zero_warn(f"checkpoint {path} records no run definition (it was not written by this "
                       "version of `mmkit fit`): it is checked only by its weights' names and shapes")
        return
    found = differences(recorded, wanted)
    if found:
        raise ValueError(f"checkpoint {path} was trained as a different model than this config asks for: "
                         f"{few(found)}; {config_hint(Path(path))}, or pass a checkpoint of this model")
    if old and optimizer and old.get("class_path") != optimizer.get("class_path"):
        was, now = old.get("class_path"), optimizer.get("class_path")
        raise ValueError(f"checkpoint {path} was trained with the optimizer {was} and this config asks for "
                         f"{now}: its optimizer state cannot carry over; resume with {was} (its lr, weight "
                         "decay, ... may change), or start a new run")


def describe_mismatch(path: Path, wanted: dict[str, Any]) -> str | None:
    """``None`` when ``path`` records ``wanted``; else why not (for listings)."""
    try:
        recorded = read_definition(path)
    except ValueError as err:
        return str(err).split(";")[0]
    if recorded is None:
        return "records no run definition"
    found = differences(recorded, wanted)
    return found[0] + (f" (+{len(found) - 1} more)" if len(found) > 1 else "") if found else None


class ProvenanceRecord(Callback):
    """Write ``checkpoint["mmkit"]``: the run's definition, its optimizer (``recipe``), the mmkit
    version, the last validation metrics and the time of the save, into every full checkpoint
    (last, best, every-n-steps, SLURM's hpc)."""

    def __init__(self, run_definition: dict[str, Any], optimizer: dict[str, Any] | None = None) -> None:
        self.definition = plain(run_definition)
        self.optimizer = plain(optimizer)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and getattr(v, "numel", lambda: 1)() == 1}
        checkpoint[RECORD_KEY] = {"version": __version__, "definition": self.definition,
                                  "recipe": {"optimizer": self.optimizer}, "val_metrics": metrics,
                                  "saved_unix": time.time()}  # when (the host's clock), for ablate's timing
