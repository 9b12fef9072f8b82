"""Read what the figures need from an ``mmkit fit`` checkpoint (no Lightning needed).

- :func:`load_state_dict`: the ``state_dict`` of a Lightning ``.ckpt`` (or a plain one);
- :func:`multimax_parameters`: every MultiMax's ``ranges`` / ``ts`` by layer name;
- :func:`load_network`: the trained network of any ``mmkit fit`` run (ViT, Transformer-XL,
  translator), rebuilt from the definition the checkpoint records and its weights;
  :func:`load_vit` the same for an image classifier. A checkpoint that records no
  definition (written by an older mmkit) falls back to the run's ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from ..files import read_checkpoint
from ..models import VisionTransformer
from ..models.saving import build_network
from ..normalizers import MultiMax
from .stats import layer_name


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint: a Lightning ``.ckpt``'s ``state_dict`` or a plain one."""
    ckpt = read_checkpoint(path, lightning=False)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state_dict of tensors")
    return state


def multimax_parameters(state: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer: (ranges, ts)}`` for every ``*.ranges`` key with a matching ``*.ts``
    (``[2N]`` or per head ``[H, 2N]``); layers are named as the callback logs them."""
    out = {}
    for key, ranges in state.items():
        if key.endswith(".ranges") and key.removesuffix("ranges") + "ts" in state:
            prefix = key.removesuffix(".ranges")
            out[layer_name(prefix)] = (ranges.float(), state[prefix + ".ts"].float())
    return out


def pick_layer(params: dict[str, tuple[Tensor, Tensor]], layer: str | None) -> tuple[str, Tensor, Tensor]:
    """One layer's parameters (by logged name or full key prefix); the first without ``layer``."""
    if not params:
        raise ValueError("the checkpoint has no MultiMax parameters (no *.ranges / *.ts keys)")
    name = layer_name(layer) if layer is not None else next(iter(params))
    if name not in params:
        raise ValueError(f"no MultiMax layer {layer!r} in the checkpoint; choose one of {', '.join(params)}")
    return name, *params[name]


def multimax_from(ranges: Tensor, ts: Tensor) -> list[MultiMax]:
    """One (single-head) MultiMax per row of ``ranges`` / ``ts`` (``[2N]`` or ``[H, 2N]``)."""
    ranges, ts = torch.as_tensor(ranges).float(), torch.as_tensor(ts).float()
    if ranges.shape != ts.shape or ranges.shape[-1] % 2 or ranges.ndim not in (1, 2):
        raise ValueError(f"ranges {tuple(ranges.shape)} and ts {tuple(ts.shape)} must both be "
                         "[2N] or [H, 2N] (b1, d1, b2, d2, ... and tb1, td1, ...)")
    out = []
    for r, t in zip(ranges.reshape(-1, ranges.shape[-1]), ts.reshape(-1, ts.shape[-1])):
        norm = MultiMax(order=r.numel() // 2, init_std=0.0)
        with torch.no_grad():
            norm.ranges.copy_(r)
            norm.ts.copy_(t)
        out.append(norm.eval())
    return out


def run_file(ckpt: str | Path, name: str) -> Path:
    """A file the run of ``<run>/checkpoints/<x>.ckpt`` saved: ``<run>/<name>`` (``mmkit fit``),
    or else ``<run>/run/<name>`` (an ``mmkit ablate`` cell logs into ``<cell>/run/``). No other
    folder is searched: a file of another run is never taken. The first path when neither
    exists, for the error message."""
    run = Path(ckpt).resolve().parent.parent
    direct, cell = run / name, run / "run" / name
    return cell if not direct.is_file() and cell.is_file() else direct


def run_config(ckpt: str | Path, config: str | Path | None = None) -> dict:
    """The run's parsed ``config.yaml`` (by default :func:`run_file` ``config.yaml`` for
    ``<run>/checkpoints/<name>.ckpt``)."""
    path = Path(config) if config is not None else run_file(ckpt, "config.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"run config {path} not found; pass the config.yaml of the run "
                                "that wrote the checkpoint")
    return yaml.safe_load(path.read_text()) or {}


def recorded_network(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The network spec (``class_path`` and ``init_args``) a checkpoint records: in the
    ``mmkit`` record every ``mmkit fit`` checkpoint carries, or in the task's hyperparameters."""
    record = ckpt.get("mmkit")
    if isinstance(record, dict) and isinstance(record.get("definition"), dict):
        network = record["definition"].get("network")
        if isinstance(network, dict):
            return network
    network = (ckpt.get("hyper_parameters") or {}).get("network")
    return network if isinstance(network, dict) else None


def load_network(ckpt: str | Path, config: str | Path | None = None) -> nn.Module:
    """The trained network of an ``mmkit fit`` run (eval mode): built from the definition the
    checkpoint records (or, for an older checkpoint or with ``config``, from the run's
    ``config.yaml``), then given the checkpoint's weights."""
    raw = read_checkpoint(ckpt, lightning=False)
    spec = recorded_network(raw) if config is None else None
    if spec is None:
        spec = (run_config(ckpt, config).get("model") or {}).get("init_args", {}).get("network") or {}
    model = build_network(spec)
    state = raw.get("state_dict", raw)
    weights = {k.removeprefix("network."): v for k, v in state.items() if k.startswith("network.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        text = " ".join(str(err).split())[:300]
        raise ValueError(f"the weights in {ckpt} do not fit the network it records: {text}") from err
    return model.eval()


def load_vit(ckpt: str | Path, config: str | Path | None = None) -> VisionTransformer:
    """The trained :class:`VisionTransformer` of an ``mmkit fit`` image-classification run (eval mode)."""
    model = load_network(ckpt, config)
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"the run's network is a {type(model).__name__}, not a VisionTransformer")
    return model
