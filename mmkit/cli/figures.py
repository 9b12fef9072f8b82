"""Figures for MultiMax research: the Figure-1 simplex, the S-M Pareto plot, learned σ
curves and ViT attention maps.

    mmkit figures simplex [--ckpt RUN/checkpoints/last.ckpt --layer blocks.0.attn |
                                     --ranges B1 D1 B2 D2 --ts TB1 TD1 TB2 TD2] [--out simplex.png]
    mmkit figures pareto [--metrics RUN/metrics.csv ...] [MultiMax as for simplex]
    mmkit figures sigma --ckpt RUN/checkpoints/last.ckpt [--layers blocks.0.attn ...]
    mmkit figures attention --ckpt RUN/checkpoints/last.ckpt (--image digit.png | --test-index 0)

MultiMax's parameters come from a checkpoint (``*.ranges`` / ``*.ts`` of one layer; the
output layer is ``output_normalizer``) or the command line; without either, the
hand-shaped parameters of ``mmkit demo`` are used. ``attention`` rebuilds the ViT from
the run's ``config.yaml`` (next to ``checkpoints/``; or ``--config``); ``--test-index``
takes an image of the run's own test split (MNIST-5k for configs/vit/mnist.yaml).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..analysis.checkpoints import (
    load_state_dict,
    load_vit,
    multimax_from,
    multimax_parameters,
    pick_layer,
    run_config,
)
from ..analysis.figure1 import ILLUSTRATIVE_RANGES, ILLUSTRATIVE_TS
from ..analysis.figures import (
    attention_figure,
    default_figure1_normalizers,
    figure1_trajectories,
    metrics_sm,
    pareto_figure,
    save_figure,
    sigma_figure,
    simplex_figure,
    toy_pareto_series,
)
from ..normalizers import MultiMax


def multimax_arg(args: argparse.Namespace) -> tuple[str, list[MultiMax]]:
    """The MultiMax(es) the user asked for, with a label saying where they come from."""
    if args.ckpt is not None:
        if args.ranges is not None or args.ts is not None:
            raise ValueError("give either --ckpt or --ranges/--ts, not both")
        name, ranges, ts = pick_layer(multimax_parameters(load_state_dict(args.ckpt)), args.layer)
        return f"multimax ({name})", multimax_from(ranges, ts)
    if (args.ranges is None) != (args.ts is None):
        raise ValueError("--ranges and --ts go together")
    if args.ranges is not None:
        return "multimax", multimax_from(torch.tensor(args.ranges), torch.tensor(args.ts))
    return "multimax (mmkit demo's shaped)", multimax_from(torch.tensor(ILLUSTRATIVE_RANGES),
                                                           torch.tensor(ILLUSTRATIVE_TS))


def cmd_simplex(args: argparse.Namespace) -> Path:
    label, heads = multimax_arg(args)
    xs = torch.linspace(args.xmin, args.xmax, args.num)
    rows = default_figure1_normalizers(heads, args.temperatures, label)
    return save_figure(simplex_figure(figure1_trajectories(rows, xs), xs), args.out)


def cmd_pareto(args: argparse.Namespace) -> Path:
    if args.metrics:
        series = []
        for path in args.metrics:
            points = metrics_sm(path)
            series.append((Path(path).parent.name or str(path), torch.tensor([[s, m] for _, s, m in points])))
        return save_figure(pareto_figure(series, "per-layer attention S and M (last logged)"), args.out)
    label, heads = multimax_arg(args)
    named = [(label if len(heads) == 1 else f"{label} h{h}", m) for h, m in enumerate(heads)]
    return save_figure(pareto_figure(toy_pareto_series(named), "S and M on v = (10, 8, -1)"), args.out)


def cmd_sigma(args: argparse.Namespace) -> Path:
    params = multimax_parameters(load_state_dict(args.ckpt))
    if args.layers:
        params = {name: (ranges, ts) for name, ranges, ts in (pick_layer(params, x) for x in args.layers)}
    if not params:
        raise ValueError(f"{args.ckpt} has no MultiMax parameters (no *.ranges / *.ts keys)")
    return save_figure(sigma_figure(params, (args.xmin, args.xmax)), args.out)


def load_image(args: argparse.Namespace, model) -> tuple[torch.Tensor, str]:
    """A normalized image ``[C, H, W]`` for ``model`` and a description of it."""
    from ..data import ImageDataModule
    from ..data.images import INFO
    from ..data.transforms import eval_transform

    data = dict((run_config(args.ckpt, args.config).get("data") or {}).get("init_args") or {})
    dataset = data.get("dataset", "mnist5k")
    if args.image is not None:
        from PIL import Image

        picture = Image.open(args.image).convert("L" if model.in_chans == 1 else "RGB")
        native = model.img_size if picture.size == (model.img_size, model.img_size) else -1
        info = INFO[dataset]
        return eval_transform(model.img_size, info["mean"], info["std"], native=native)(picture), args.image
    module = ImageDataModule(**{**data, "img_size": model.img_size, "download": False})
    module.setup("test")
    image, label = module.test_set[args.test_index]
    return image, f"{dataset} test image {args.test_index} (label {label})"


def cmd_attention(args: argparse.Namespace) -> Path:
    if (args.image is None) == (args.test_index is None):
        raise ValueError("give exactly one of --image and --test-index")
    model = load_vit(args.ckpt, args.config)
    image, what = load_image(args, model)
    with torch.no_grad():
        logits, maps = model.attention_maps(image[None])
    side = model.img_size // model.patch_size
    fig = attention_figure(image, [m[0] for m in maps], (side, side), model.cls_token is not None)
    fig.suptitle(f"{what}: predicted class {int(logits.argmax())}", fontsize=9)
    return save_figure(fig, args.out)


def add_multimax_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="checkpoint whose MultiMax parameters to use")
    p.add_argument("--layer", help="layer name, e.g. blocks.0.attn or output_normalizer (default: first)")
    p.add_argument("--ranges", type=float, nargs="+", help="b1 d1 b2 d2 (order 2)")
    p.add_argument("--ts", type=float, nargs="+", help="tb1 td1 tb2 td2 (order 2)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mmkit figures", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("simplex", help="Figure 1: trajectories on the simplex for v = (10, x, -1)")
    add_multimax_args(p)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0, 3.0, 10.0])
    p.add_argument("--xmin", type=float, default=-2.0)
    p.add_argument("--xmax", type=float, default=12.0)
    p.add_argument("--num", type=int, default=400)
    p.add_argument("--out", default="figures/simplex.png")
    p = sub.add_parser("pareto", help="sparsity S vs multi-modality M")
    add_multimax_args(p)
    p.add_argument("--metrics", nargs="+", help="metrics.csv files logged with AttentionStatistics")
    p.add_argument("--out", default="figures/pareto.png")
    p = sub.add_parser("sigma", help="learned σ(x) per layer from a checkpoint")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--layers", nargs="+", help="layer names (default: all)")
    p.add_argument("--xmin", type=float, default=-10.0)
    p.add_argument("--xmax", type=float, default=10.0)
    p.add_argument("--out", default="figures/sigma.png")
    p = sub.add_parser("attention", help="a ViT's attention maps on one image")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--config", help="the run's config.yaml (default: next to checkpoints/)")
    p.add_argument("--image", help="an image file")
    p.add_argument("--test-index", type=int, help="an image of the run's test split")
    p.add_argument("--out", default="figures/attention.png")
    return top


COMMANDS = {"simplex": cmd_simplex, "pareto": cmd_pareto, "sigma": cmd_sigma, "attention": cmd_attention}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        path = COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"mmkit figures: error: {err}\n")
        return 2
    sys.stdout.write(f"wrote {path}\n")
    return 0
