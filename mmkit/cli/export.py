"""``mmkit export``: a trained network as an export directory, loadable without Lightning.

    mmkit export --ckpt_path RUN/checkpoints/last.ckpt [--out DIR]

writes ``DIR/model.safetensors`` and ``DIR/config.json`` (by default ``DIR`` is ``RUN/export``);
``mmkit.models.load_pretrained(DIR)`` rebuilds the network, and a task's ``init_weights: DIR``
starts a fit from it. The format is described in :mod:`mmkit.models.saving`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..analysis.checkpoints import load_network, recorded_network
from ..files import read_checkpoint
from ..models import save_pretrained


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmkit export",
        description="Write a checkpoint's network as model.safetensors + config.json, which "
                    "mmkit.models.load_pretrained reads without Lightning (needs "
                    "pip install 'mmkit[timm]' for safetensors).")
    p.add_argument("--ckpt_path", required=True,
                   help="a checkpoint of `mmkit fit`, e.g. RUN/checkpoints/last.ckpt")
    p.add_argument("--out", help="the export directory (default: RUN/export)")
    return p


def default_out(ckpt: str) -> Path:
    path = Path(ckpt).resolve()
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return run / "export"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        spec = recorded_network(read_checkpoint(args.ckpt_path))
        if spec is None:
            raise ValueError(f"checkpoint {args.ckpt_path} records no network definition (written by an "
                             "older mmkit or outside `mmkit fit`); load it with "
                             "mmkit.analysis.checkpoints.load_network(ckpt, config) and save_pretrained")
        network = load_network(args.ckpt_path)
        out = Path(args.out) if args.out else default_out(args.ckpt_path)
        save_pretrained(network, out, spec.get("init_args") or {})
    except (ValueError, OSError) as err:
        if os.environ.get("MMKIT_DEBUG"):
            raise
        sys.stderr.write(f"mmkit: error: {' '.join(str(err).split())}\n")
        return 2
    sys.stdout.write(f"exported {type(network).__name__} to {out}\n")
    return 0
