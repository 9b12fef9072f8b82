"""Read what the figures need from an ``mmkit fit`` checkpoint (no Lightning needed).

- :func:`load_state_dict`: the ``state_dict`` of a Lightning ``.ckpt`` (or a plain one);
- :func:`multimax_parameters`: every MultiMax's ``ranges`` / ``ts`` by layer name;
- :func:`load_vit`: the ViT of an image-classification run, rebuilt from the run's
  ``config.yaml`` (written by ``mmkit fit`` next to ``checkpoints/``) and its weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import Tensor

from ..models import VisionTransformer
from ..normalizers import MultiMax
from .stats import layer_name


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint: a Lightning ``.ckpt``'s ``state_dict`` or a plain one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
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


def run_config(ckpt: str | Path, config: str | Path | None = None) -> dict:
    """The run's parsed ``config.yaml`` (by default ``<run>/config.yaml`` for
    ``<run>/checkpoints/<name>.ckpt``)."""
    path = Path(config) if config is not None else Path(ckpt).resolve().parent.parent / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"run config {path} not found; pass the config.yaml of the run "
                                "that wrote the checkpoint")
    return yaml.safe_load(path.read_text()) or {}


def load_vit(ckpt: str | Path, config: str | Path | None = None) -> VisionTransformer:
    """The trained :class:`VisionTransformer` of an ``mmkit fit`` image-classification run (eval mode)."""
    network = (run_config(ckpt, config).get("model") or {}).get("init_args", {}).get("network") or {}
    if not str(network.get("class_path", "")).endswith("VisionTransformer"):
        raise ValueError(f"the run's model.init_args.network is {network.get('class_path')!r}, "
                         "not a VisionTransformer")
    model = VisionTransformer(**(network.get("init_args") or {}))
    state = {k.removeprefix("network."): v for k, v in load_state_dict(ckpt).items()
             if k.startswith("network.")}
    model.load_state_dict(state)
    return model.eval()
