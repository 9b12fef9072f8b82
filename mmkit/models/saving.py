"""Hand a trained network on without Lightning: an export directory and its loader.

An export directory holds two files, each written atomically:

- ``model.safetensors``: the network's ``state_dict`` (tensors shared by several names, such as
  tied embeddings, stored once under their first name);
- ``config.json``: ``{"format": "mmkit-pretrained", "format_version": 1, "mmkit_version",
  "network": {"class_path", "init_args"}, "normalizer": {"attention", "output"},
  "aliases": {name: stored name}}``.

:func:`load_pretrained` builds the network from ``config.json`` (only ``mmkit.models``
classes: a file names no code to run) and loads the weights. :func:`build_network` is that
builder, shared with the analysis of checkpoints. Writing and reading ``model.safetensors``
needs the ``safetensors`` package (``pip install 'mmkit[timm]'``).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .. import __version__
from ..files import atomic_open, few, write_json_atomic

EXTRA = "pip install 'mmkit[timm]'"
FORMAT, FORMAT_VERSION = "mmkit-pretrained", 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed (a ``ValueError`` too, so that the ``mmkit``
    command reports it as one line)."""


def require(module: str) -> Any:
    """Import an optional dependency of ``mmkit[timm]`` or raise one clear line."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingExtraError(f"{top} is not installed; {EXTRA} to import timm weights and to "
                                "write or read model.safetensors") from None


def build_network(spec: dict[str, Any]) -> nn.Module:
    """Instantiate ``{"class_path": "mmkit.models....", "init_args": {...}}`` (mmkit's own
    network classes only: a checkpoint or config names no code to run)."""
    class_path = str(spec.get("class_path", ""))
    module_name, _, name = class_path.rpartition(".")
    if not module_name.startswith("mmkit.models"):
        raise ValueError(f"the checkpoint's network is {class_path!r}; only mmkit.models networks "
                         "are rebuilt")
    cls = getattr(importlib.import_module(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{class_path!r} is not a network class of this mmkit")
    return cls(**(spec.get("init_args") or {}))


def _public_class_path(network: nn.Module) -> str:
    cls = type(network)
    package = importlib.import_module("mmkit.models")
    return f"mmkit.models.{cls.__name__}" if getattr(package, cls.__name__, None) is cls \
        else f"{cls.__module__}.{cls.__qualname__}"


def save_pretrained(network: nn.Module, directory: str | os.PathLike,
                    init_args: dict[str, Any] | None = None) -> Path:
    """Write ``network`` to ``directory`` (see the module docstring); ``init_args`` are its
    constructor arguments (by default ``network.init_args``, which :func:`load_pretrained` and
    :func:`~mmkit.models.vit_from_timm` set). Returns the directory."""
    save = require("safetensors.torch").save
    init_args = init_args if init_args is not None else getattr(network, "init_args", None)
    if not isinstance(init_args, dict):
        raise ValueError(f"save_pretrained needs the {type(network).__name__}'s constructor arguments: "
                         "pass init_args={...}")
    class_path = _public_class_path(network)
    if not class_path.startswith("mmkit.models"):
        raise ValueError(f"only mmkit.models networks can be exported, not {class_path}")
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, value in network.state_dict(keep_vars=False).items():
        key = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if value.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = value.detach().cpu().contiguous()
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "mmkit_version": __version__,
              "network": {"class_path": class_path, "init_args": init_args},
              "normalizer": {"attention": init_args.get("normalizer"),
                             "output": init_args.get("output_normalizer")},
              "aliases": aliases}
    directory = Path(directory)
    json.dumps(config)  # a TypeError here, before anything is written, for arguments JSON cannot hold
    with atomic_open(directory / WEIGHTS, "wb") as f:
        f.write(save(tensors, metadata={"format": FORMAT}))
    write_json_atomic(directory / CONFIG, config)
    return directory


def read_export(directory: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict (aliases filled in) and ``config.json`` of an export directory."""
    directory = Path(directory)
    missing = [name for name in (WEIGHTS, CONFIG) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not an mmkit export directory (no {' or '.join(missing)}); "
                                "write one with `mmkit export` or save_pretrained")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG} is not an mmkit export config (format {FORMAT!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{directory} was written by a newer mmkit ({config.get('mmkit_version')}); "
                         "upgrade mmkit to read it")
    load_file = require("safetensors.torch").load_file
    try:
        state = load_file(str(directory / WEIGHTS))
    except Exception as err:
        reason = " ".join(str(err).split())[:160]
        raise ValueError(f"{directory / WEIGHTS} is not a readable safetensors file ({reason})") from None
    for alias, stored in (config.get("aliases") or {}).items():
        if stored not in state:
            raise ValueError(f"{directory / CONFIG} names {alias} as {stored}, which is not in {WEIGHTS}")
        state[alias] = state[stored]
    return state, config


def load_pretrained(directory: str | os.PathLike) -> nn.Module:
    """The network of an export directory (eval mode), without Lightning."""
    state, config = read_export(directory)
    spec = config.get("network")
    if not isinstance(spec, dict):
        raise ValueError(f"{Path(directory) / CONFIG} records no network")
    network = build_network(spec)
    own = network.state_dict()
    wrong = sorted(set(own) ^ set(state)) + [k for k in own if k in state and own[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"the weights in {directory} do not fit the network its config.json records: "
                         f"{few(wrong)}")
    network.load_state_dict(state)
    network.init_args = spec.get("init_args") or {}
    return network.eval()


__all__ = ["save_pretrained", "load_pretrained", "read_export", "build_network", "require",
           "MissingExtraError"]
