"""The `mmkit` LightningCLI: every shipped YAML parses, `fit` trains with every
normalizer overlay, `--ckpt_path` resumes, and bad input is one clear line."""

import contextlib
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmkit.ablation.command import parse as parse_grid
from mmkit.cli import MMKitCLI
from mmkit.entry import main
from mmkit.normalizers import GRID_NORMALIZERS, NORMALIZERS

from .conftest import quiet_trainer_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "ablation")
GRIDS = sorted((ROOT / "configs/ablation").glob("*.yaml"))
MNIST = str(ROOT / "configs/vit/mnist.yaml")
OVERLAYS = sorted((ROOT / "configs/normalizer").glob("*.yaml"))


def fast(tmp_path: Path, steps: int = 3) -> list[str]:
    return [
        "--model.network.init_args.preset=test", "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={steps}", "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2", "--trainer.limit_predict_batches=2",
        "--data.init_args.batch_size=16", *quiet_trainer_args(tmp_path),
    ]


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_every_shipped_config_parses_and_instantiates(path):
    files = [MNIST, str(path)] if path.parent.name in ("normalizer", "callbacks", "trainer") else [str(path)]
    # The WikiText-103 and One Billion Words LMs (up to 500M parameters) are built on the meta
    # device: fast, no memory.
    with torch.device("meta") if "wt103" in path.name or "lm1b" in path.name else contextlib.nullcontext():
        cli = MMKitCLI(args=[arg for f in files for arg in ("-c", f)], run=False)
    assert isinstance(cli.model, torch.nn.Module) and cli.datamodule is not None
    if path.parent.name == "normalizer":
        attn = cli.model.network.blocks[0].attn.normalizer
        assert type(attn) is NORMALIZERS[path.stem]


@pytest.mark.parametrize("path", GRIDS, ids=[p.name for p in GRIDS])
def test_every_shipped_ablation_grid_builds_each_cell(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # grids name their configs relative to the repository
    spec, _ = parse_grid(["-c", str(path)])
    for cell in spec.cells():
        if cell.seed != spec.seeds[0]:
            continue
        args = [a for a in cell.cli_args() if not a.startswith("--trainer.logger")]
        with torch.device("meta") if "wt103" in cell.config else contextlib.nullcontext():
            cli = MMKitCLI(args=args, run=False)
        normalizer = cli.model.network.output_normalizer
        assert type(normalizer).__name__.lower().startswith(cell.normalizer.rstrip("0123456789"))


def test_overlays_cover_the_main_normalizers():
    assert {p.stem for p in OVERLAYS} >= set(GRID_NORMALIZERS)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.stem for p in OVERLAYS])
def test_fit_a_few_steps_then_test_with_each_normalizer(overlay, tmp_path):
    cli = MMKitCLI(args=["fit", "-c", MNIST, "-c", str(overlay), *fast(tmp_path)])
    assert cli.trainer.global_step == 3
    assert type(cli.model.network.output_normalizer) is NORMALIZERS[overlay.stem]
    run = Path(cli.trainer.logger.log_dir)
    losses = [float(r["train/loss"]) for r in metrics(run) if r.get("train/loss")]
    val = [float(r["val/acc1"]) for r in metrics(run) if r.get("val/acc1")]
    assert losses and all(math.isfinite(x) for x in losses) and len(val) == 1
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    test = MMKitCLI(args=["test", "-c", MNIST, "-c", str(overlay), *fast(tmp_path),
                          "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert 0.0 <= test.trainer.callback_metrics["test/acc1"] <= 1.0


def test_ckpt_path_last_resumes_the_newest_run_in_place(tmp_path):
    first = MMKitCLI(args=["fit", "-c", MNIST, *fast(tmp_path)])
    run = Path(first.trainer.logger.log_dir)
    assert first.trainer.global_step == 3
    # The saved config.yaml reruns (it is overwritten, never blocking).
    again = MMKitCLI(args=["fit", "-c", str(run / "config.yaml"), "--trainer.max_epochs=2",
                           "--ckpt_path=last"])
    assert Path(again.trainer.logger.log_dir) == run
    assert again.trainer.global_step == 6 and again.trainer.current_epoch == 2
    epochs = {int(r["epoch"]) for r in metrics(run) if r.get("val/acc1")}
    assert epochs == {0, 1}
    # No checkpoint yet under another name: "last" starts from scratch.
    fresh = MMKitCLI(args=["fit", "-c", MNIST, *fast(tmp_path), "--ckpt_path=last",
                           "--trainer.logger.init_args.name=other"])
    assert fresh.trainer.global_step == 3


def test_validate_and_predict_from_a_checkpoint(tmp_path):
    fit = MMKitCLI(args=["fit", "-c", MNIST, *fast(tmp_path, steps=1)])
    ckpt = Path(fit.trainer.logger.log_dir) / "checkpoints" / "last.ckpt"
    val = MMKitCLI(args=["validate", "-c", MNIST, *fast(tmp_path), "--ckpt_path", str(ckpt)])
    assert 0.0 <= val.trainer.callback_metrics["val/acc1"] <= 1.0
    cli = MMKitCLI(args=["predict", "-c", MNIST, *fast(tmp_path), "--ckpt_path", str(ckpt)])
    batches = cli.trainer.predict_loop.predictions
    assert len(batches) == 2 and batches[0]["pred"].shape == (16,)
    assert torch.allclose(batches[0]["probs"].sum(-1), torch.ones(16), atol=1e-5)
    with open(Path(cli.trainer.log_dir) / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32 and [int(r["index"]) for r in rows] == list(range(32))
    assert [int(r["pred"]) for r in rows[:16]] == batches[0]["pred"].tolist()


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", MNIST, "--model.network.normalizer=multimax", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "normalizer: multimax" in out and "class_path: mmkit.models.VisionTransformer" in out


@pytest.mark.parametrize("args,message", [
    (["--model.network.normalizer=nosuchmax"],
     "unknown normalizer 'nosuchmax'; choose one of softmax, sparsemax, entmax15, entmax, multimax"),
    (["--data.init_args.dataset=imagefolder", "--data.init_args.root=/no/such/dir"],
     "imagefolder data not found: expected /no/such/dir/train/<class>/<image>"),
    (["--model.network.init_args.patch_size=5"],
     "img_size (28) must be divisible by patch_size (5)"),
    (["--model.network.init_args.num_classes=7"],
     "the data has 10 classes but the network outputs 7"),
    (["--data.init_args.img_size=32"],
     "images of shape [B, 1, 32, 32], which do not fit this VisionTransformer: it expects [B, 1, 28, 28]"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path, capsys):
    assert main(["fit", "-c", MNIST, *fast(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit: error: ") and message in err[0]


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmkit", "fit", "-c", MNIST,
                           "--model.network.normalizer=nosuchmax"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("mmkit: error: unknown normalizer")
