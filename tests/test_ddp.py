"""DDP on CPU (gloo, ``ddp_spawn``, 2 processes) equals one process.

- **Evaluation.** The same weights evaluated on 1 and on 2 processes give the same
  test metrics over the whole split: every sample counts once (the test splits have an
  odd size, so a padded DistributedSampler would count one sample twice).
- **Training.** A few optimizer steps with global batch ``B`` on 1 process give the
  same weights as ``B/2`` per process on 2 processes (dropout and augmentation off):
  - ViT: the seeded sampler gives both runs the same global order;
  - LM: the token streams are rank-sharded by design, so 2 processes with ``B/2``
    streams each equal 1 process with ``B`` streams (same ``[B, L]`` stream grid);
  - translation: batches are token-bucketed, so 2 processes (one batch each per
    step) equal 1 process accumulating 2 batches per step.
"""

from __future__ import annotations

import copy
import warnings
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from mmkit.cli import MMKitCLI

ROOT = Path(__file__).resolve().parents[1]
VIT = ["-c", str(ROOT / "configs/vit/mnist.yaml"), "--model.network.init_args.preset=test",
       "--data.init_args.augment=none", "--data.init_args.test_fraction=0.0402",  # 201 images
       "--data.init_args.eval_batch_size=32"]
LM = ["-c", str(ROOT / "configs/lm/kjv.yaml"), "--model.network.init_args.preset=test",
      "--model.network.init_args.vocab_size=300", "--model.network.init_args.dropout=0",
      "--model.network.init_args.dropatt=0", "--data.init_args.corpus=pydoc",
      "--data.init_args.vocab_size=300", "--data.init_args.max_chars=20000",
      "--data.init_args.tgt_len=16"]
MT = ["-c", str(ROOT / "configs/mt/numbers_en_de.yaml"), "--model.network.init_args.preset=test",
      "--model.network.init_args.vocab_size=400", "--model.network.init_args.dropout=0",
      "--data.init_args.vocab_size=400", "--data.init_args.num_train=300",
      "--data.init_args.num_valid=9", "--data.init_args.num_test=9",  # odd: 5 + 4
      # one sentence per eval batch: an untrained model's beam search has near-ties that
      # padding to another batch's length flips (17 of 23 hypotheses, on one process)
      "--data.init_args.max_tokens=256", "--data.init_args.eval_batch_size=1",
      "--data.init_args.max_number=300", "--model.init_args.beam=2",
      "--model.init_args.max_len_b=3", "--model.init_args.max_len_a=0.5"]
# Training runs use plain SGD: Adam divides by sqrt(v), which turns the last-bit
# differences of summing a batch's gradient in two halves into visible weight changes
# wherever a gradient is tiny; SGD keeps them at rounding level.
SGD = partial(torch.optim.SGD, lr=0.5)


def build(args: list[str]) -> tuple[LightningModule, LightningDataModule]:
    """The task and data module the CLI builds, data set up once here (before spawning).

    Use a fresh pair for each ``fit``: after one, both point at its trainer, whose
    scheduler (a local function) cannot be pickled for ``ddp_spawn``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = MMKitCLI(args=args, run=False)
    cli.datamodule.setup("fit")
    cli.model.optimizer_factory = SGD
    return cli.model, cli.datamodule


def data_only(args: list[str]) -> LightningDataModule:
    """A fresh data module of ``args`` (the same seeded data as :func:`build`'s)."""
    return build(args)[1]


def report(name: str, one: dict[str, float], two: dict[str, float]) -> None:
    """Print the 1- and 2-process numbers (``pytest -s`` shows them)."""
    for key in sorted(one):
        print(f"{name} {key}: 1 process {one[key]:.8g}, 2 processes {two[key]:.8g}")


def trainer(devices: int, root: Path, **kwargs) -> Trainer:
    strategy = dict(strategy="ddp_spawn") if devices > 1 else {}
    return Trainer(accelerator="cpu", devices=devices, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False,
                   default_root_dir=str(root / f"p{devices}"), num_sanity_val_steps=0,
                   limit_val_batches=0, **strategy, **kwargs)


def evaluate(model: LightningModule, data: LightningDataModule, devices: int,
                 root: Path) -> dict[str, float]:
    (result,) = trainer(devices, root).test(model, data, verbose=False)
    return result


def assert_same_weights(one: torch.nn.Module, two: torch.nn.Module, start: torch.nn.Module,
                        name: str) -> None:
    """Both runs moved the weights by the same amount (and did move them)."""
    moved, differ = 0.0, 0.0
    for (key, a), b, c in zip(one.state_dict().items(), two.state_dict().values(),
                              start.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=2e-5, msg=lambda m: f"{key}: {m}")
            moved = max(moved, float((a - c).abs().max()))
            differ = max(differ, float((a - b).abs().max()))
    print(f"{name}: max |weight change| {moved:.3g}, max |1 process - 2 processes| {differ:.3g}")
    assert moved > 1e-3  # the steps did change the weights


# ---------------------------------------------------------------------------- images
def test_vit_test_metrics_count_each_image_once(tmp_path):
    model, data = build(VIT + ["--data.init_args.batch_size=16"])
    assert len(data.test_set) % 2 == 1
    one, two = (evaluate(model, data, n, tmp_path) for n in (1, 2))
    report("vit", one, two)
    for key in ("test/acc1", "test/acc5"):
        assert two[key] == one[key], key  # 201 images: one counted twice would show
    assert two["test/loss"] == pytest.approx(one["test/loss"], rel=1e-5)


def trains_like_one(task: str, one_args: list[str], two_args: list[str], tmp_path, **one_kwargs) -> None:
    """3 steps on 1 process (``one_args``, trainer ``one_kwargs``) and on 2 processes
    (``two_args``, half the batch each) from the same start reach the same weights."""
    model, data = build(one_args)
    start, twin = copy.deepcopy(model), copy.deepcopy(model)
    trainer(1, tmp_path, max_steps=3, **one_kwargs).fit(model, data)
    trainer(2, tmp_path, max_steps=3).fit(twin, data_only(two_args))
    assert_same_weights(model, twin, start, task)


@pytest.mark.slow
def test_vit_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    trains_like_one("vit", VIT + ["--data.init_args.batch_size=16"], VIT + ["--data.init_args.batch_size=8"],
                    tmp_path)


# ---------------------------------------------------------------------------- language model
@pytest.mark.slow
def test_lm_test_perplexity_over_the_same_streams(tmp_path):
    model, data = build(LM + ["--data.init_args.eval_batch_size=4"])
    one = evaluate(model, data, 1, tmp_path)
    data.eval_batch_size = 2  # per process: the same 4 streams in all
    two = evaluate(model, data, 2, tmp_path)
    report("lm", one, two)
    for key in ("test/ppl", "test/bpb", "test/loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


@pytest.mark.slow
def test_lm_two_processes_with_half_the_streams_train_like_one(tmp_path):
    trains_like_one("lm", LM + ["--data.init_args.batch_size=4"], LM + ["--data.init_args.batch_size=2"],
                    tmp_path)


# ---------------------------------------------------------------------------- translation
def test_translation_test_bleu_and_hypotheses_match_one_process(tmp_path):
    model, data = build(MT)
    one, two = (evaluate(model, data, n, tmp_path) for n in (1, 2))
    hyps = [(tmp_path / f"p{n}" / "hyps.test.txt").read_text().splitlines() for n in (1, 2)]
    assert len(hyps[0]) == 9 and hyps[1] == hyps[0]
    report("mt", one, two)
    for key in ("test/bleu", "test/bleu_tok", "test/loss"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_translation_two_processes_train_like_one_accumulating_two_batches(tmp_path):
    args = MT + ["--model.init_args.warmup_steps=1"]
    trains_like_one("mt", args, args, tmp_path, accumulate_grad_batches=2)
