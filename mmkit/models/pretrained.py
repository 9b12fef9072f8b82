"""Start from pretrained weights: an mmkit :class:`~mmkit.models.VisionTransformer` from a timm
ViT/DeiT, with any attention and output normalizer.

- :func:`vit_from_timm`: a timm state dict (or a local ``.safetensors`` / ``.pth`` / ``.bin``
  file of one) and, where the weights cannot say it, a timm model name or ``num_heads``, to a
  ready network. Width, depth, patch size, MLP ratio, q/k/v bias, class token and the head's
  classes are read from the tensors' shapes; heads, LayerNorm epsilon and pooling come from
  the timm model name (or arguments).
- :func:`load_weights`: fill a network that is already built (by a config) from an export
  directory (:func:`~mmkit.models.save_pretrained`) or a timm weights file; what the tasks'
  ``init_weights`` option calls.

Position embeddings are resized bicubically on their grid as timm's ``resample_abs_pos_embed``
does (the class token's position kept) when the image size differs; the head is left at its
fresh initialisation when the number of classes differs; normalizer parameters (MultiMax's
SegLU scalars, a learnable α) keep the network's own initialisation. What cannot be mapped
(a distillation or register token, ``fc_norm`` after average pooling, layer scale, q/k norm)
is refused with one ``ValueError`` line. timm and safetensors are optional: they are imported
only here, inside the functions that need them.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..files import few, read_checkpoint
from ..normalizers import Normalizer, NormalizerSpec
from .saving import MissingExtraError, read_export, require
from .vit import VisionTransformer

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_REFUSED = {  # a key fragment of a timm ViT that mmkit's ViT cannot hold -> why
    "dist_token": "a distillation token (a distilled DeiT); use the non-distilled model, "
                  "e.g. deit_small_patch16_224, whose head reads the class token only",
    "reg_token": "register tokens, which mmkit's ViT has none of",
    "fc_norm.": "fc_norm (a LayerNorm after average pooling); mmkit's average pooling equals "
                "timm's with fc_norm=False (the final norm before pooling)",
    ".ls1.": "layer scale (LayerScale gammas), which mmkit's blocks have none of",
    ".q_norm.": "q/k normalization, which mmkit's attention has none of",
    "norm_pre.": "a pre-norm before the blocks (CLIP-style), which mmkit's ViT has none of",
    "attn_pool.": "attention pooling, which mmkit's ViT has none of",
    "pre_logits.": "a pre-logits layer, which mmkit's ViT has none of",
}
_BLOCK_KEYS = {"mlp.fc1": "mlp.0", "mlp.fc2": "mlp.3"}


def read_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a torch ``.pth`` / ``.pt`` / ``.bin``
    (a plain state dict, or one under ``model`` / ``state_dict``, with ``module.`` prefixes)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass a weights file ({', '.join(WEIGHT_SUFFIXES)}) "
                         "or an export directory with model.safetensors and config.json")
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; download it first (mmkit reads "
                                "only local files)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path} has an unknown suffix; expected one of "
                         f"{', '.join(WEIGHT_SUFFIXES)}")
    if path.suffix == ".safetensors":
        load_file = require("safetensors.torch").load_file
        try:
            state = load_file(str(path))
        except Exception as err:  # SafetensorError, OSError, ... for bad bytes
            reason = " ".join(str(err).split())[:160]
            raise ValueError(f"weights file {path} is not a readable safetensors file ({reason})") from None
    else:
        state = read_checkpoint(path, lightning=False)
        for key in ("model", "state_dict", "module"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} holds no state dict of tensors")
    return state


def is_timm_vit(state: dict[str, Tensor]) -> bool:
    return "patch_embed.proj.weight" in state


def convert_timm_state(state: dict[str, Tensor], source: str = "the weights") -> dict[str, Tensor]:
    """A timm ViT state dict under mmkit's names (fused ``qkv`` split into ``q`` and ``kv``)."""
    if not is_timm_vit(state):
        raise ValueError(f"{source} are not a timm ViT state dict (no patch_embed.proj.weight; it "
                         f"holds {few(sorted(state))})")
    for fragment, why in _REFUSED.items():
        if any(fragment in key for key in state):
            raise ValueError(f"{source} have {why}; mmkit cannot map it")
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        found = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        if key.startswith("patch_embed.proj."):
            out["patch_embed." + key.rsplit(".", 1)[1]] = value
        elif key in ("cls_token", "pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias"):
            out[key] = value
        elif found and found.group(2) == "attn.qkv":
            pre, dim = f"blocks.{found.group(1)}.attn.", value.shape[0] // 3
            out[pre + "q." + found.group(3)], out[pre + "kv." + found.group(3)] = value[:dim], value[dim:]
        elif found and found.group(2) in ("norm1", "norm2", "attn.proj", *_BLOCK_KEYS):
            name = _BLOCK_KEYS.get(found.group(2), found.group(2))
            out[f"blocks.{found.group(1)}.{name}.{found.group(3)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source} have keys mmkit's ViT cannot hold: {few(sorted(unknown))}")
    if "patch_embed.bias" not in out:  # a bias-free patch embedding is the zero bias
        out["patch_embed.bias"] = out["patch_embed.weight"].new_zeros(out["patch_embed.weight"].shape[0])
    return out


def timm_architecture(model_name: str) -> dict[str, Any]:
    """What a timm ViT/DeiT model name fixes beyond shapes: heads, LayerNorm epsilon, pooling,
    the image size, and its state dict's shapes (the model is built on the meta device)."""
    timm = require("timm")
    try:
        with torch.device("meta"):
            ref = timm.create_model(model_name, pretrained=False)
    except Exception as err:
        raise ValueError(f"timm has no model {model_name!r} ({' '.join(str(err).split())[:120]})") from None
    if type(ref).__name__ != "VisionTransformer":
        why = "; it has a distillation token" if getattr(ref, "dist_token", None) is not None else ""
        raise ValueError(f"timm model {model_name!r} is a {type(ref).__name__}, not a plain timm "
                         f"VisionTransformer{why}; mmkit imports ViT/DeiT models only")
    state = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    convert_timm_state({k: torch.empty(0) for k in state}, f"timm model {model_name!r}'s weights")
    pool = ref.global_pool
    if pool not in ("token", "avg") or (pool == "avg") == ref.has_class_token or ref.no_embed_class:
        raise ValueError(f"timm model {model_name!r} pools by {pool!r} with class token "
                         f"{ref.has_class_token}; mmkit maps a class token read by the head, or "
                         "average pooling without a class token")
    return {"num_heads": ref.blocks[0].attn.num_heads, "norm_eps": ref.norm.eps,
            "pool": "cls" if pool == "token" else "avg", "img_size": ref.patch_embed.img_size[0],
            "shapes": state}


def timm_network_args(state: dict[str, Tensor], model_name: str | None = None,
                      num_heads: int | None = None, norm_eps: float | None = None) -> dict[str, Any]:
    """:class:`VisionTransformer` arguments for a (timm-named) ViT state dict: sizes from the
    shapes, heads and epsilon from ``model_name`` or the arguments (timm's default eps 1e-6)."""
    ref = timm_architecture(model_name) if model_name else None
    if ref is not None:
        wrong = [f"{k} {tuple(v.shape)} (timm: {ref['shapes'][k]})" for k, v in state.items()
                 if k in ref["shapes"] and tuple(v.shape) != ref["shapes"][k]
                 and k not in ("pos_embed", "head.weight", "head.bias")]
        wrong += [f"{k} missing" for k in ref["shapes"] if k not in state and not k.startswith("head.")]
        if wrong:
            raise ValueError(f"the weights do not fit timm model {model_name!r}: {few(wrong, 2)}")
    mine = convert_timm_state(state)
    conv = mine["patch_embed.weight"]  # [D, C, p, p]
    dim, in_chans, patch = conv.shape[0], conv.shape[1], conv.shape[2]
    if conv.shape[2] != conv.shape[3]:
        raise ValueError(f"the patch embedding is {conv.shape[2]}x{conv.shape[3]}; "
                         "mmkit's patches are square")
    depth = len({k.split(".")[1] for k in mine if k.startswith("blocks.")})
    hidden = mine["blocks.0.mlp.0.weight"].shape[0]
    if int(dim * (hidden / dim)) != hidden:
        raise ValueError(f"the MLP width {hidden} is no mlp_ratio of the width {dim} mmkit can build")
    cls = "cls_token" in mine
    grid = math.isqrt(mine["pos_embed"].shape[1] - cls)
    if grid * grid != mine["pos_embed"].shape[1] - cls:
        raise ValueError(f"pos_embed has {mine['pos_embed'].shape[1]} positions, not a square grid"
                         + (" plus the class token" if cls else ""))
    heads = num_heads if num_heads is not None else ref and ref["num_heads"]
    if not heads:
        raise ValueError("the number of attention heads is not in a state dict; pass the timm model "
                         "name (model_name=..., init_timm_model) or num_heads=...")
    if ref is not None and heads != ref["num_heads"]:
        raise ValueError(f"num_heads={heads} contradicts timm model {model_name!r} "
                         f"({ref['num_heads']} heads)")
    if ref is not None and ref["pool"] != ("cls" if cls else "avg"):
        raise ValueError(f"the weights ({'a' if cls else 'no'} class token) do not fit timm model "
                         f"{model_name!r} (pool {ref['pool']})")
    args: dict[str, Any] = dict(
        img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim, depth=depth,
        num_heads=heads, mlp_ratio=hidden / dim, qkv_bias="blocks.0.attn.q.bias" in mine,
        pool="cls" if cls else "avg",
        norm_eps=norm_eps if norm_eps is not None else ref["norm_eps"] if ref else 1e-6, init="deit")
    if "head.weight" in mine:
        args["num_classes"] = mine["head.weight"].shape[0]
    return args


def resize_positions(pos: Tensor, grid: int, prefix: int) -> Tensor:
    """``pos [1, prefix + g*g, C]`` on a ``grid x grid`` grid: bicubic with antialiasing in
    float32 as timm's ``resample_abs_pos_embed``; the ``prefix`` (class token) positions kept."""
    old = math.isqrt(pos.shape[1] - prefix)
    head, body = pos[:, :prefix], pos[:, prefix:].float()
    body = body.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    body = F.interpolate(body, size=(grid, grid), mode="bicubic", antialias=True)
    body = body.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)
    return torch.cat([head, body], dim=1)


def load_state(network: nn.Module, state: dict[str, Tensor], source: str = "the weights") -> list[str]:
    """Load ``state`` (mmkit names) into ``network``: a ViT's positions resized to its grid, a
    head of another size left fresh; the network's normalizer parameters may be absent from
    ``state`` (they keep their init). Returns the keys left at their init."""
    state = dict(state)
    own = network.state_dict()
    if isinstance(network, VisionTransformer) and "pos_embed" in state:
        prefix = int(network.cls_token is not None)
        if ("cls_token" in state) != bool(prefix):
            raise ValueError(f"{source} {'have' if 'cls_token' in state else 'have no'} class token, but the "
                             f"network pools by {network.pool!r}; set pool to "
                             f"{'cls' if 'cls_token' in state else 'avg'}")
        old = state["pos_embed"].shape[1] - prefix
        if math.isqrt(old) ** 2 != old:
            raise ValueError(f"{source} have {old} patch positions, not a square grid")
        if state["pos_embed"].shape != own["pos_embed"].shape:
            state["pos_embed"] = resize_positions(state["pos_embed"], network.img_size // network.patch_size,
                                                  prefix)
    fresh = set()  # keys that may stay at the network's init: a ViT's head, normalizer parameters
    if isinstance(network, VisionTransformer):
        fresh = {"head.weight", "head.bias"}
        for key in fresh & set(state):
            if state[key].shape != own[key].shape:
                del state[key]  # another number of classes: a fresh head
    fresh |= {f"{name}.{p}" for name, m in network.named_modules() if isinstance(m, Normalizer)
              for p, _ in m.named_parameters()}
    wrong = [f"{k} {tuple(v.shape)} (network: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and k not in fresh)
    if wrong or unexpected or missing:
        parts = [f"shapes differ: {few(wrong, 2)}" if wrong else "",
                 f"unknown keys: {few(unexpected)}" if unexpected else "",
                 f"missing keys: {few(missing)}" if missing else ""]
        raise ValueError(f"{source} do not fit the network ({'; '.join(p for p in parts if p)}); "
                         "check its size options (preset, embed_dim, depth, mlp_ratio, patch_size, qkv_bias)")
    network.load_state_dict(state, strict=False)
    return sorted(k for k in own if k not in state)


def load_weights(network: nn.Module, source: str | os.PathLike, timm_model: str | None = None,
                 num_heads: int | None = None) -> list[str]:
    """Fill ``network`` from an export directory or a weights file (timm ViT names or mmkit's).
    A timm file does not record its number of heads, and weights split into other heads load
    without a shape error but compute something else: it needs ``timm_model`` (the network is
    checked against that model's heads, epsilon and pooling) or ``num_heads`` (checked against
    the network's). Returns the keys left at their init (head, normalizer parameters)."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"init weights {path} not found: expected an export directory (`mmkit "
                                f"export`) or a local weights file ({', '.join(WEIGHT_SUFFIXES)})")
    if path.is_dir():
        return load_state(network, read_export(path)[0], f"the weights in {path}")
    state = read_weights(path)
    if is_timm_vit(state):
        if not isinstance(network, VisionTransformer):
            raise ValueError(f"{path} holds timm ViT weights; the network is a {type(network).__name__}")
        heads = network.blocks[0].attn.num_heads
        if not timm_model and num_heads is None:
            raise ValueError(f"{path} holds timm weights, which do not record their number of heads; set "
                             "init_timm_model (its timm model name) or init_num_heads, so the network's "
                             f"{heads} heads can be checked")
        if num_heads is not None and num_heads != heads:
            raise ValueError(f"the weights in {path} have {num_heads} heads (init_num_heads); the network "
                             f"has {heads}")
        if timm_model:
            args = timm_network_args(state, timm_model)
            mine = {"num_heads": network.blocks[0].attn.num_heads, "norm_eps": network.norm.eps,
                    "pool": network.pool}
            wrong = [f"{k}={v!r} (timm: {args[k]!r})" for k, v in mine.items() if v != args[k]]
            if wrong:
                raise ValueError(f"the network does not match timm model {timm_model!r}: {', '.join(wrong)}")
        state = convert_timm_state(state, f"the weights in {path}")
    return load_state(network, state, f"the weights in {path}")


def vit_from_timm(weights: dict[str, Tensor] | str | os.PathLike, model_name: str | None = None, *,
                  num_heads: int | None = None, img_size: int | None = None,
                  num_classes: int | None = None, normalizer: NormalizerSpec = "softmax",
                  output_normalizer: NormalizerSpec = "softmax", norm_eps: float | None = None,
                  **network_args: Any) -> VisionTransformer:
    """An mmkit ViT holding a timm ViT/DeiT's weights, with ``normalizer`` in every attention
    layer and ``output_normalizer`` at the head (their parameters at the paper's init).

    ``weights``: a timm state dict or a local weights file. ``model_name`` (e.g.
    ``"deit_small_patch16_224"``) or ``num_heads`` gives the heads. ``img_size`` resizes the
    positions, ``num_classes`` replaces the head; ``network_args`` go to the constructor
    (e.g. ``drop_path_rate``). The result's ``init_args`` are what :func:`save_pretrained` records.
    """
    state = read_weights(weights) if isinstance(weights, (str, os.PathLike)) else dict(weights)
    args = timm_network_args(state, model_name, num_heads, norm_eps)
    if num_classes is not None:
        args["num_classes"] = num_classes
    elif "num_classes" not in args:
        raise ValueError("the weights have no classifier head; pass num_classes=...")
    args |= dict(normalizer=normalizer, output_normalizer=output_normalizer, **network_args)
    if img_size is not None:
        args["img_size"] = img_size
    network = VisionTransformer(**args)
    load_state(network, convert_timm_state(state), "the timm weights")
    network.init_args = args  # what save_pretrained records
    return network.eval()


__all__ = ["vit_from_timm", "load_weights", "load_state", "read_weights", "convert_timm_state",
           "timm_network_args", "timm_architecture", "resize_positions", "MissingExtraError", "require"]
