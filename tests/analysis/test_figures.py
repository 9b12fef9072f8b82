"""Figure functions and `mmkit figures`: the data behind them (simplex coordinates,
trajectories, logged S/M, checkpoint parameters) is right, and so is their structure
(small multiples, labelled points without lines, one shared colour scale with one
colorbar, exact zeros in their own colour), the files (next to the run by default; PNG
and PDF)."""

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mmkit.analysis import attention_maps, figures
from mmkit.analysis.checkpoints import (
    load_state_dict,
    load_vit,
    multimax_from,
    multimax_parameters,
    pick_layer,
)
from mmkit.entry import main
from mmkit.models import VisionTransformer
from mmkit.normalizers import MultiMax

VIT = dict(preset="test", img_size=8, patch_size=4, in_chans=1, num_classes=10, normalizer="multimax",
           per_head=True, output_normalizer="multimax", drop_path_rate=0.0)


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def assert_pdf(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:5] == b"%PDF-" and len(data) > 2000


def map_images(fig) -> list:
    return [im for ax in fig.axes for im in ax.images if im.get_label() == attention_maps.ATTENTION_LABEL]


def colorbars(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


@pytest.fixture
def run_dir(tmp_path):
    """A fake ``mmkit fit`` run of a tiny per-head MultiMax ViT: config.yaml + checkpoint."""
    model = VisionTransformer(**VIT)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # not the init values
    config = {"model": {"init_args": {"network": {"class_path": "mmkit.models.VisionTransformer",
                                                  "init_args": VIT}}},
              "data": {"class_path": "mmkit.data.ImageDataModule", "init_args": {"dataset": "mnist5k"}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "checkpoints").mkdir()
    state = {f"network.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 0}, tmp_path / "checkpoints" / "last.ckpt")
    return tmp_path, model


def test_barycentric_corners_and_inverse():
    corners = figures.barycentric(torch.eye(3))
    assert torch.allclose(corners, torch.tensor([[0, 0], [1, 0], [0.5, math.sqrt(3) / 2]]))
    p = torch.softmax(torch.randn(20, 3), -1)
    xy = figures.barycentric(p)
    p2 = xy[:, 1] / (math.sqrt(3) / 2)
    p1 = xy[:, 0] - 0.5 * p2
    assert torch.allclose(torch.stack([1 - p1 - p2, p1, p2], -1), p, atol=1e-6)


def test_trajectories_simplex_and_pareto_figures(tmp_path):
    xs = torch.linspace(-2, 12, 30)
    heads = multimax_from(torch.randn(2, 4), torch.randn(2, 4) * 0.3)
    rows = figures.default_figure1_normalizers(heads, (0.5, 2.0))
    curves = figures.figure1_trajectories(rows, xs)
    assert [c[0] for c in curves][-2:] == ["multimax h0", "multimax h1"]
    v = torch.stack([torch.full_like(xs, 10.0), xs, torch.full_like(xs, -1.0)], -1)
    assert torch.allclose(curves[1][1], torch.softmax(v / 2.0, -1), atol=1e-6)
    assert torch.allclose(curves[-1][1], heads[1](v.double()).float(), atol=1e-6)
    fig = figures.simplex_figure(curves, xs)
    triangles = [ax for ax in fig.axes if ax.get_title() in [c[0] for c in curves]]
    assert len(triangles) == len(curves) and len(fig.axes) == len(curves) + 1  # one each, and p(x)
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1  # legend outside
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [c[0] for c in curves]
    assert_png(figures.save_figure(fig, tmp_path / "a" / "simplex.png"))
    assert_pdf(figures.save_figure(fig, tmp_path / "a" / "simplex.pdf"))
    series = figures.toy_pareto_series([("mm", heads[0])], num=8)
    assert series[0][1].shape == (8, 2) and series[-1][1].shape == (1, 2)
    t = float(torch.logspace(-1, 1, 8)[3])
    v = torch.tensor([10.0, 8.0, -1.0], dtype=torch.float64)
    probs, reference = torch.softmax(v / t, -1), torch.softmax(v, -1).min()
    expected = [math.exp(-float(probs[2] / reference)), 1 - float(probs[0] - probs[1])]  # Defs 3.2, 3.3
    assert series[0][1][3].tolist() == pytest.approx(expected, abs=1e-6)
    assert series[-1][1][0].tolist() == pytest.approx(figures.sm_point(heads[0]), abs=1e-6)
    assert_png(figures.save_figure(figures.pareto_figure(series), tmp_path / "pareto.png"))


def test_metrics_sm_reads_the_last_logged_values(tmp_path):
    values = torch.rand(2, 2, 2).tolist()  # [row, layer, (S, M)]
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "attn/a/S", "attn/a/M", "attn/b.c/S", "attn/b.c/M", "val/loss"])
        writer.writeheader()
        for row in values:
            writer.writerow({"epoch": 0, "attn/a/S": row[0][0], "attn/a/M": row[0][1],
                             "attn/b.c/S": row[1][0], "attn/b.c/M": row[1][1]})
        writer.writerow({"epoch": 1, "val/loss": 1.0})
    got = figures.metrics_sm(path)
    assert [g[0] for g in got] == ["a", "b.c"]
    assert [g[1:] for g in got] == [pytest.approx(tuple(values[-1][0])), pytest.approx(tuple(values[-1][1]))]
    (tmp_path / "empty.csv").write_text("epoch,val/loss\n0,1.0\n")
    with pytest.raises(ValueError, match="attention_stats.yaml"):
        figures.metrics_sm(tmp_path / "empty.csv")


def test_checkpoint_parameters_sigma_and_attention_figures(run_dir, tmp_path):
    run, model = run_dir
    ckpt = run / "checkpoints" / "last.ckpt"
    params = multimax_parameters(load_state_dict(ckpt))
    assert list(params) == ["blocks.0.attn", "blocks.1.attn", "output_normalizer"]
    name, ranges, ts = pick_layer(params, "network.blocks.1.attn.normalizer")
    assert name == "blocks.1.attn" and torch.equal(ts, model.blocks[1].attn.normalizer.ts.detach())
    with pytest.raises(ValueError, match="choose one of blocks.0.attn"):
        pick_layer(params, "nope")
    heads = multimax_from(ranges, ts)
    x = torch.randn(2, 5)
    per_head = model.blocks[1].attn.normalizer
    with torch.no_grad():
        expected = per_head(x[None, :, None, :].expand(1, 2, 1, 5).contiguous())[0, :, 0]
        assert torch.allclose(torch.stack([h(x[i]) for i, h in enumerate(heads)]), expected, atol=1e-6)
    assert_png(figures.save_figure(figures.sigma_figure(params), tmp_path / "sigma.png"))
    loaded = load_vit(ckpt)
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded(images), model.eval()(images), atol=1e-6)
        _, maps = loaded.attention_maps(images)
    fig = attention_maps.attention_figure(images[0], [("a", [m[0] for m in maps])], (2, 2))
    assert len(map_images(fig)) == len(maps) and len(colorbars(fig)) == 1
    assert_png(figures.save_figure(fig, tmp_path / "attention.png"))


def sparse_maps(layers: int = 2, heads: int = 3, n: int = 5) -> list[torch.Tensor]:
    """Probabilities ``[heads, n, n]`` with exact zeros (sparsemax of random scores)."""
    from mmkit.normalizers import SparseMax

    return [SparseMax()(torch.randn(heads, n, n) * 3) for _ in range(layers)]


def test_patch_attention_queries():
    attn = torch.softmax(torch.randn(2, 5, 5), -1)  # a class token and 2x2 patches
    mean = attn[:, :, 1:].mean(1).reshape(2, 2, 2)
    assert torch.allclose(attention_maps.patch_attention(attn, (2, 2)), mean)
    assert torch.equal(attention_maps.patch_attention(attn, (2, 2), "cls"), attn[:, 0, 1:].reshape(2, 2, 2))
    assert torch.equal(attention_maps.patch_attention(attn, (2, 2), 3), attn[:, 4, 1:].reshape(2, 2, 2))
    with pytest.raises(ValueError, match="patch index in 0..3"):
        attention_maps.patch_attention(attn, (2, 2), 4)
    with pytest.raises(ValueError, match="no class token"):
        attention_maps.patch_attention(attn[:, 1:, 1:], (2, 2), "cls")


def test_attention_figure_shares_one_scale_and_marks_exact_zeros(tmp_path):
    image = torch.rand(1, 8, 8)
    dense = [torch.softmax(torch.randn(3, 5, 5), -1) for _ in range(2)]
    models = [("softmax", dense), ("sparsemax", sparse_maps())]
    fig = attention_maps.attention_figure(image, models, (2, 2), query=1, heads=True, overlay=True)
    ims = map_images(fig)
    assert len(ims) == 2 * 2 * 3  # rows: model x layer; columns: heads
    assert len({im.get_clim() for im in ims}) == 1 and ims[0].get_clim()[0] == 0.0
    panels = [attention_maps.patch_attention(m, (2, 2), 1)[h]
              for _, maps in models for m in maps for h in range(3)]
    assert ims[0].get_clim()[1] == pytest.approx(float(torch.stack(panels).max()))
    (bar,) = colorbars(fig)
    assert "p = 0 exactly" in bar.get_ylabel() and "query patch 1" in fig.get_suptitle()
    zeros = [(im, panel == 0) for im, panel in zip(ims, panels) if (panel == 0).any()]
    assert zeros, "sparsemax gives exact zeros"
    white = (1.0, 1.0, 1.0)
    for im, mask in zeros:
        assert (im.get_array().mask == mask.numpy()).all()
        rgba = im.to_rgba(im.get_array())
        assert all(tuple(rgba[i, j, :3]) == white for i, j in mask.nonzero().tolist())
        assert not any(tuple(rgba[i, j, :3]) == white for i, j in (~mask).nonzero().tolist())
    assert sum(len(ax.images) for ax in fig.axes) == len(ims) * 2 + 1  # overlay: the image under each map
    fig = attention_maps.attention_figure(image, models, (2, 2))  # one row per model, one column per layer
    assert len(map_images(fig)) == 4 and len(colorbars(fig)) == 1
    assert "averaged over queries and heads" in fig.get_suptitle()
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_ylabel()] == [
        "softmax", "sparsemax"]
    fig = attention_maps.attention_figure(image, models[:1], (2, 2), query=1)  # softmax: no exact zeros
    assert "p = 0 exactly (none here)" in colorbars(fig)[0].get_ylabel()


def test_metrics_pareto_labels_points_by_run_and_layer(tmp_path):
    from mmkit.cli.figure_inputs import default_out, run_names

    runs = [("softmax", [("blocks.0.attn", 0.1, 0.2), ("blocks.1.attn", 0.3, 0.4)]),
            ("multimax", [("blocks.0.attn", 0.8, 0.9), ("blocks.1.attn", 0.7, 0.6)])]
    fig = figures.metrics_pareto_figure(runs)
    (ax,) = fig.axes
    assert not ax.lines and len(ax.collections) == 2  # points, no lines
    assert sorted(t.get_text() for t in ax.texts) == ["L0", "L0", "L1", "L1"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["softmax", "multimax"]
    paths = [str(tmp_path / n / "vit_mnist" / "version_0" / "metrics.csv") for n in ("softmax", "multimax")]
    assert run_names(paths) == ["softmax", "multimax"]
    assert run_names(paths[:1]) == ["vit_mnist/version_0"]
    cells = [str(tmp_path / "cells" / c / "run" / "metrics.csv") for c in ("mnist-mm-s0", "mnist-mm-s1")]
    assert run_names(cells) == ["mnist-mm-s0", "mnist-mm-s1"]
    assert default_out("pareto", paths) == tmp_path / "figures" / "pareto.png"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert default_out("sigma", [str(ckpt)]) == tmp_path / "run" / "figures" / "sigma.png"
    assert default_out("simplex", []) == Path("figures/simplex.png")
    assert figures.short_layer("encoder.layers.2.self_attn") == "encoder.L2.self_attn"


def test_figures_tool_subcommands(run_dir, tmp_path, capsys, monkeypatch):
    run, _ = run_dir
    ckpt = str(run / "checkpoints" / "last.ckpt")
    Image.fromarray((torch.rand(12, 12) * 255).to(torch.uint8).numpy()).save(tmp_path / "digit.png")
    metrics = tmp_path / "m" / "metrics.csv"
    metrics.parent.mkdir()
    metrics.write_text("epoch,attn/blocks.0.attn/S,attn/blocks.0.attn/M\n0,0.4,0.7\n")
    commands = [
        ["simplex", "--ckpt", ckpt, "--layer", "blocks.0.attn", "--num", "40"],
        ["simplex", "--ranges", "2", "6", "0", "0", "--ts", "-2", "-0.5", "0", "0", "--num", "40"],
        ["pareto", "--metrics", str(metrics)],
        ["pareto", "--ckpt", ckpt, "--layer", "output_normalizer"],
        ["sigma", "--ckpt", ckpt, "--layers", "blocks.1.attn", "output_normalizer"],
        ["attention", "--ckpt", ckpt, "--image", str(tmp_path / "digit.png")],
        ["attention", "--ckpt", ckpt, "--test-index", "3", "--query", "2", "--heads", "--overlay"],
        ["attention", "--ckpt", ckpt, ckpt, "--test_index", "3"],
    ]
    for i, command in enumerate(commands):
        out = tmp_path / f"fig{i}.{'pdf' if i % 2 else 'png'}"
        assert main(["figures", *command, "--out", str(out)]) == 0, command
        (assert_pdf if i % 2 else assert_png)(out)
    assert capsys.readouterr().out.count("wrote ") == len(commands)
    # by default next to the run; without a checkpoint in figures/ of the working directory
    monkeypatch.chdir(tmp_path)
    assert main(["figures", "attention", "--ckpt", ckpt, "--test_index", "0"]) == 0
    assert_png(run / "figures" / "attention.png")
    assert main(["figures", "sigma", "--ckpt", ckpt]) == 0
    assert_png(run / "figures" / "sigma.png")
    assert main(["figures", "pareto", "--metrics", str(metrics)]) == 0
    assert_png(tmp_path / "m" / "figures" / "pareto.png")
    assert main(["figures", "simplex", "--num", "20"]) == 0
    assert_png(tmp_path / "figures" / "simplex.png")
    assert f"wrote {run / 'figures' / 'attention.png'}" in capsys.readouterr().out
    bad = ["figures", "simplex", "--ckpt", ckpt, "--ranges", "1", "--out", str(tmp_path / "x.png")]
    assert main(bad) == 2
    assert main(["figures", "sigma", "--ckpt", str(tmp_path / "none.ckpt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["figures", "attention", "--ckpt", ckpt, "--test_index", "0", "--query", "cls"]) == 2
    assert "no class token" in capsys.readouterr().err


def test_multimax_from_checks_shapes():
    with pytest.raises(ValueError, match=r"\[2N\] or \[H, 2N\]"):
        multimax_from(torch.zeros(3), torch.zeros(3))
    (single,) = multimax_from(torch.tensor([2.0, 6.0, 0, 0]), torch.tensor([-2.0, -0.5, 0, 0]))
    assert isinstance(single, MultiMax) and single.order == 2
