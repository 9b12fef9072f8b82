"""Figures for MultiMax research: the Figure-1 simplex, the S-M Pareto plot, learned σ
curves, ViT attention maps and translation cross-attention.

    mmkit figures simplex [--ckpt RUN/checkpoints/last.ckpt --layer blocks.0.attn |
                                     --ranges B1 D1 B2 D2 --ts TB1 TD1 TB2 TD2] [--out simplex.png]
    mmkit figures pareto [--metrics RUN/metrics.csv ...] [MultiMax as for simplex]
    mmkit figures sigma --ckpt RUN/checkpoints/last.ckpt [--layers blocks.0.attn ...]
    mmkit figures attention --ckpt RUN/checkpoints/last.ckpt [RUN2/...] (--image digit.png | --test_index 0)
                            [--query cls|PATCH] [--heads] [--overlay]
    mmkit figures alignment --ckpt MT_RUN/checkpoints/last.ckpt (--source "..." | --test_index 0) [--heads]
    mmkit figures layers --ckpt RUN/checkpoints/last.ckpt [RUN2/...] [--num 64] [--text "..." ...]
    mmkit figures oversmoothing --ckpt RUN/checkpoints/last.ckpt [RUN2/...] [--num 64] [--test_index 0]
    mmkit figures localisation --ckpt RUN/checkpoints/last.ckpt [RUN2/...] --test_index 0 1 2 [--num 100]

MultiMax's parameters come from a checkpoint (``*.ranges`` / ``*.ts`` of one layer; the
output layer is ``output_normalizer``) or the command line; without either, the
hand-shaped parameters of ``mmkit demo`` are used. ``attention`` rebuilds each ViT from
its checkpoint (or the run's ``config.yaml``, ``--config``); ``--test_index`` takes an
image of the first run's own test split (MNIST-5k for configs/vit/mnist.yaml).

A figure goes to ``RUN/figures/<name>.png`` next to the run of ``--ckpt`` / ``--metrics``
(the runs' common folder for several), else to ``figures/<name>.png``; ``--out`` picks
the path, and its suffix the format (``.png``, ``.pdf``, ``.svg``). ``layers``,
``oversmoothing`` and ``localisation`` also write their numbers to ``<name>.csv`` beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from textwrap import shorten

import torch

from ..analysis.alignment import alignment_figure, cross_attention
from ..analysis.attention_maps import Query, attention_figure
from ..analysis.checkpoints import (
    load_network,
    load_state_dict,
    load_vit,
    multimax_from,
    multimax_parameters,
    pick_layer,
    run_config,
    run_file,
)
from ..analysis.figure1 import ILLUSTRATIVE_RANGES, ILLUSTRATIVE_TS
from ..analysis.figures import (
    default_figure1_normalizers,
    figure1_trajectories,
    metrics_pareto_figure,
    metrics_sm,
    pareto_figure,
    save_figure,
    sigma_figure,
    simplex_figure,
    toy_pareto_series,
)
from ..data import TranslationDataModule
from ..data.tokenizer import load_tokenizer
from ..models import Seq2SeqTransformer
from ..normalizers import MultiMax
from .figure_inputs import (
    load_image,
    normalizer_name,
    out_path,
    run_names,
)
from .figures_evidence import EVIDENCE_COMMANDS, add_evidence_parsers


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
    fig = simplex_figure(figure1_trajectories(rows, xs), xs)
    return save_figure(fig, out_path(args, "simplex", [args.ckpt] if args.ckpt else []))


def cmd_pareto(args: argparse.Namespace) -> Path:
    if args.metrics:
        runs = list(zip(run_names(args.metrics), (metrics_sm(p) for p in args.metrics)))
        return save_figure(metrics_pareto_figure(runs), out_path(args, "pareto", args.metrics))
    label, heads = multimax_arg(args)
    named = [(label if len(heads) == 1 else f"{label} h{h}", m) for h, m in enumerate(heads)]
    fig = pareto_figure(toy_pareto_series(named), "S and M on v = (10, 8, -1)")
    return save_figure(fig, out_path(args, "pareto", [args.ckpt] if args.ckpt else []))


def cmd_sigma(args: argparse.Namespace) -> Path:
    params = multimax_parameters(load_state_dict(args.ckpt))
    if args.layers:
        params = {name: (ranges, ts) for name, ranges, ts in (pick_layer(params, x) for x in args.layers)}
    if not params:
        raise ValueError(f"{args.ckpt} has no MultiMax parameters (no *.ranges / *.ts keys)")
    return save_figure(sigma_figure(params, (args.xmin, args.xmax)), out_path(args, "sigma", [args.ckpt]))


def query_arg(text: str) -> Query:
    """``--query``: ``cls`` or a patch index."""
    if text.lower() == "cls":
        return "cls"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes 'cls' or a patch index, got {text!r}") from None


def cmd_attention(args: argparse.Namespace) -> Path:
    if (args.image is None) == (args.test_index is None):
        raise ValueError("give exactly one of --image and --test_index")
    if args.config is not None and len(args.ckpt) > 1:
        raise ValueError("--config goes with a single --ckpt (each checkpoint records its network)")
    models = [load_vit(c, args.config) for c in args.ckpt]
    shapes = {(m.img_size, m.patch_size, m.in_chans) for m in models}
    if len(shapes) > 1:
        raise ValueError(f"the checkpoints' ViTs take different inputs (img_size, patch_size, in_chans): "
                         f"{sorted(shapes)}")
    image, what = load_image(args, models[0], args.ckpt[0])
    names = [normalizer_name(m) for m in models]
    if len(set(names)) < len(names):
        names = [f"{n} {r}" for n, r in zip(names, run_names(args.ckpt))]
    rows = []
    for name, model in zip(names, models):
        with torch.no_grad():
            logits, maps = model.attention_maps(image[None])
        rows.append((f"{name}\n(predicts {int(logits.argmax())})", [m[0] for m in maps]))
    side = models[0].img_size // models[0].patch_size
    fig = attention_figure(image, rows, (side, side), args.query, heads=args.heads, overlay=args.overlay,
                           title=what)
    return save_figure(fig, out_path(args, "attention", args.ckpt))


def cmd_alignment(args: argparse.Namespace) -> Path:

    if (args.source is None) == (args.test_index is None):
        raise ValueError("give exactly one of --source and --test_index")
    model = load_network(args.ckpt, args.config)
    if not isinstance(model, Seq2SeqTransformer):
        raise ValueError(f"the run's network is a {type(model).__name__}, not a Seq2SeqTransformer")
    tokenizer = load_tokenizer(str(run_file(args.ckpt, "tokenizer.json")), "the run's tokenizer {path}",
                               "alignment needs the tokenizer.json that mmkit fit saved in the run folder")
    data = dict((run_config(args.ckpt, args.config).get("data") or {}).get("init_args") or {})
    module = TranslationDataModule(**data)
    source = args.source
    if source is None:
        test = module._read_pairs()["test"]
        if not 0 <= args.test_index < len(test):
            raise ValueError(f"--test_index {args.test_index} is not in the test split (0..{len(test) - 1})")
        source = test[args.test_index][0]
    ids = tokenizer.encode(source).ids[:module.hp.max_tokens_per_sentence]
    ids += [model.eos_id] if module.hp.boundaries == "fairseq" else []
    target, maps = cross_attention(model, torch.tensor(ids, dtype=torch.long))
    words = [[tokenizer.decode([i]).strip() or tokenizer.id_to_token(i) for i in x] for x in (ids, target)]
    title = f"{shorten(source, 90)}  →  {shorten(tokenizer.decode(target), 90)} (greedy)"
    fig = alignment_figure(words[0], [*words[1], "</s>"], maps, heads=args.heads, title=title)
    return save_figure(fig, out_path(args, "alignment", [args.ckpt]))


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
    p.add_argument("--out", help="output file, .png or .pdf (default: RUN/figures/simplex.png or figures/)")
    p = sub.add_parser("pareto", help="sparsity S vs multi-modality M")
    add_multimax_args(p)
    p.add_argument("--metrics", nargs="+", help="metrics.csv files logged with AttentionStatistics")
    p.add_argument("--out", help="output file, .png or .pdf (default: RUN/figures/pareto.png or figures/)")
    p = sub.add_parser("sigma", help="learned σ(x) per layer from a checkpoint")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--layers", nargs="+", help="layer names (default: all)")
    p.add_argument("--xmin", type=float, default=-10.0)
    p.add_argument("--xmax", type=float, default=10.0)
    p.add_argument("--out", help="output file, .png or .pdf (default: RUN/figures/sigma.png)")
    p = sub.add_parser("attention", help="ViT attention maps on one image, for one or several checkpoints")
    p.add_argument("--ckpt", required=True, nargs="+",
                   help="checkpoints (several: one row each, one colour scale, labelled by normalizer)")
    p.add_argument("--config", help="the run's config.yaml (default: recorded in the checkpoint)")
    p.add_argument("--image", help="an image file")
    p.add_argument("--test_index", type=int, help="an image of the first run's test split")
    p.add_argument("--test-index", type=int, dest="test_index", help=argparse.SUPPRESS)
    p.add_argument("--query", type=query_arg, metavar="cls|PATCH",
                   help="the attention of one query: the class token or a patch index (row-major); "
                        "default: the mean over all queries")
    p.add_argument("--heads", action="store_true", help="one row per layer, one column per head")
    p.add_argument("--overlay", action="store_true", help="draw the maps over the image")
    p.add_argument("--out", help="output file, .png or .pdf (default: RUN/figures/attention.png)")
    p = sub.add_parser("alignment", help="a translator's cross-attention on one sentence")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--config", help="the run's config.yaml (default: next to checkpoints/)")
    p.add_argument("--source", help="a source sentence")
    p.add_argument("--test_index", type=int, help="a sentence of the run's test split")
    p.add_argument("--heads", action="store_true", help="one row per decoder layer, one column per head")
    p.add_argument("--out", help="output file, .png or .pdf (default: RUN/figures/alignment.png)")
    add_evidence_parsers(sub)
    return top


COMMANDS = {"simplex": cmd_simplex, "pareto": cmd_pareto, "sigma": cmd_sigma, "attention": cmd_attention,
            "alignment": cmd_alignment, **EVIDENCE_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        path = COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"mmkit figures: error: {err}\n")
        return 2
    sys.stdout.write(f"wrote {path}\n")
    return 0
