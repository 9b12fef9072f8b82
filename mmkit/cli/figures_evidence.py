"""The evidence subcommands of ``mmkit figures``: ``layers`` (per-layer S, M, entropy and exact
zeros), ``oversmoothing`` (patch-token similarity across depth) and ``localisation`` (Grad-CAM,
attention rollout and their mass on the ink)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..analysis.checkpoints import (
    load_network,
    load_state_dict,
    load_vit,
    multimax_parameters,
)
from ..analysis.figures import (
    save_figure,
    sigma_figure,
)
from ..analysis.layer_stats import layer_statistics, layer_stats_figure, stats_table
from ..analysis.localisation import grad_cam, ink_mask, ink_share, localisation_figure, rollout_of
from ..analysis.oversmoothing import curve_figure, oversmoothing_curve, similarity_figure
from ..analysis.oversmoothing import similarity_matrices as matrices
from ..models import Seq2SeqTransformer, TransformerXL, VisionTransformer
from .figure_inputs import checkpoint_labels, image_batch, out_path, text_forward, write_table


def cmd_layers(args: argparse.Namespace) -> Path:

    models = [load_network(c, args.config) for c in args.ckpt]
    runs, what = [], set()
    for ckpt, model in zip(args.ckpt, models):
        if isinstance(model, VisionTransformer):
            images, _, dataset = image_batch(ckpt, args.config, model, list(range(args.num)))
            what.add(f"{dataset}: the first {args.num} test images")
            runs.append(layer_statistics(model, lambda m=model, x=images: m(x)))
        elif isinstance(model, TransformerXL | Seq2SeqTransformer):
            what.add("--text" if args.text else "the run's test split")
            runs.append(layer_statistics(model, text_forward(args, model, ckpt)))
        else:
            kind = type(model).__name__
            raise ValueError(f"layers takes ViT, Transformer-XL or translator runs, not {kind}")
    named = list(zip(checkpoint_labels(args.ckpt, models), runs))
    out = out_path(args, "layers", args.ckpt)
    title = "per-layer attention on " + "; ".join(sorted(what))
    path = save_figure(layer_stats_figure(named, title=title), out)
    csv_text, markdown = stats_table(named)
    write_table(out.with_suffix(".csv"), csv_text)
    write_table(out.with_suffix(".md"), markdown)
    for (label, _), ckpt in zip(named, args.ckpt):
        params = multimax_parameters(load_state_dict(ckpt))
        if params:
            tag = "" if len(args.ckpt) == 1 else "_" + "".join(c if c.isalnum() else "_" for c in label)
            save_figure(sigma_figure(params), out.with_name(f"{out.stem}_sigma{tag}{out.suffix}"))
    return path


def load_vits(args: argparse.Namespace) -> tuple[list[VisionTransformer], list[str]]:
    models = [load_vit(c, args.config) for c in args.ckpt]
    if len({(m.img_size, m.patch_size, m.in_chans) for m in models}) > 1:
        raise ValueError("the checkpoints' ViTs take different inputs (img_size, patch_size, in_chans)")
    return models, checkpoint_labels(args.ckpt, models)


def cmd_oversmoothing(args: argparse.Namespace) -> Path:

    models, labels = load_vits(args)
    images, targets, dataset = image_batch(args.ckpt[0], args.config, models[0], list(range(args.num)))
    curves = [(label, oversmoothing_curve(m, images)) for label, m in zip(labels, models)]
    out = out_path(args, "oversmoothing", args.ckpt)
    path = save_figure(curve_figure(curves, f"mean over the first {args.num} {dataset} test images"), out)
    image, target, _ = image_batch(args.ckpt[0], args.config, models[0], [args.test_index])
    maps = [(label, matrices(m, image[0])) for label, m in zip(labels, models)]
    title = f"{dataset} test image {args.test_index} (label {target[0]})"
    save_figure(similarity_figure(maps, title), out.with_name(f"{out.stem}_maps{out.suffix}"))
    rows = [f"{label},{b + 1},{float(v):.4f}" for label, c in curves for b, v in enumerate(c)]
    write_table(out.with_suffix(".csv"), "\n".join(["run,block,mean_cosine", *rows]) + "\n")
    return path


def cmd_localisation(args: argparse.Namespace) -> Path:

    models, labels = load_vits(args)
    shown, targets, dataset = image_batch(args.ckpt[0], args.config, models[0], args.test_index)
    images = [(f"test {i} (label {t})", x) for i, t, x in zip(args.test_index, targets, shown)]
    per_model = []
    for label, m in zip(labels, models):
        (cams, _), (rolls, preds) = grad_cam(m, shown), rollout_of(m, shown)
        per_model.append((label, list(zip(cams, rolls, preds.tolist()))))
    out = out_path(args, "localisation", args.ckpt)
    path = save_figure(localisation_figure(images, per_model, dataset), out)
    batch, _, _ = image_batch(args.ckpt[0], args.config, models[0], list(range(args.num)))
    rows = ["run,method,ink_share,ink_fraction,images"]
    fraction = sum(float(ink_mask(x, args.threshold).float().mean()) for x in batch) / len(batch)
    for label, m in zip(labels, models):
        for method, fn in (("grad-cam", grad_cam), ("rollout", rollout_of)):
            maps = fn(m, batch)[0]
            shares = torch.tensor([ink_share(cam, x, args.threshold) for cam, x in zip(maps, batch)])
            rows.append(f"{label},{method},{float(shares.nanmean()):.4f},{fraction:.4f},"
                        f"{int((~shares.isnan()).sum())}")
    write_table(out.with_suffix(".csv"), "\n".join(rows) + "\n")
    return path


def add_evidence_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="per-layer attention S, M, entropy and exact zeros of trained runs")
    p.add_argument("--ckpt", required=True, nargs="+", help="checkpoints (ViT, Transformer-XL or translator)")
    p.add_argument("--config", help="the run's config.yaml (default: next to checkpoints/)")
    p.add_argument("--num", type=int, default=64, help="test images, LM windows or sentences (default 64)")
    p.add_argument("--text", nargs="+", help="LM or translator input instead of the test split")
    p.add_argument("--chars", type=int, default=20000, help="LM: test-split characters to read")
    p.add_argument("--out", help="output file (default: RUN/figures/layers.png; numbers in .csv/.md beside)")
    p = sub.add_parser("oversmoothing", help="ViT: patch-token cosine similarity after each block")
    p.add_argument("--ckpt", required=True, nargs="+")
    p.add_argument("--config", help="the run's config.yaml (default: next to checkpoints/)")
    p.add_argument("--num", type=int, default=64, help="test images to average over (default 64)")
    p.add_argument("--test_index", type=int, default=0, help="the image of the similarity maps")
    p.add_argument("--out", help="output file (default: RUN/figures/oversmoothing.png, _maps.png, .csv)")
    p = sub.add_parser("localisation", help="ViT: Grad-CAM and attention rollout, and their mass on the ink")
    p.add_argument("--ckpt", required=True, nargs="+")
    p.add_argument("--config", help="the run's config.yaml (default: next to checkpoints/)")
    p.add_argument("--test_index", type=int, nargs="+", required=True, help="test images to draw")
    p.add_argument("--num", type=int, default=100, help="test images for the ink share (default 100)")
    p.add_argument("--threshold", type=float, default=0.5, help="ink: pixels above this share of the range")
    p.add_argument("--out", help="output file (default: RUN/figures/localisation.png; numbers in .csv)")


EVIDENCE_COMMANDS = {"layers": cmd_layers, "oversmoothing": cmd_oversmoothing,
                     "localisation": cmd_localisation}
