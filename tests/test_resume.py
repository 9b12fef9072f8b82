"""Exact resume: a ``mmkit fit`` SIGKILLed by its parent at some step and resumed
with ``--ckpt_path last`` ends with the same ``last.ckpt`` weights (``torch.equal`` on every
tensor) and the same metrics.csv, row for row, as the uninterrupted run.

Each run is a real ``python -m mmkit fit`` subprocess on the CPU, with dropout/drop-path
and random augmentation on, so a lost RNG state, a repeated batch or a lost memory shows.
The parent polls ``last.ckpt`` (saved every 3 steps) until it holds the target step, then
kills the child after a short random delay: the kill lands anywhere in the next step(s).
The uninterrupted run goes beside the killed one; each child uses one thread
(``OMP_NUM_THREADS=1``). No ``torch.use_deterministic_algorithms`` is needed on the CPU.
"""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mmkit.cli.resume import rng_states, set_rng_states
from mmkit.data.lm import StreamWindows
from mmkit.data.sharding import ResumableSampler, SeededSamples, sample_seed

ROOT = Path(__file__).resolve().parents[1]
MNIST, KJV = str(ROOT / "configs/vit/mnist.yaml"), str(ROOT / "configs/lm/kjv.yaml")
NUMBERS = str(ROOT / "configs/mt/numbers_en_de.yaml")
EVERY = 3  # checkpoint.every_n_train_steps

COMMON = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--trainer.log_every_n_steps=1", "--trainer.num_sanity_val_steps=0",
          f"--checkpoint.every_n_train_steps={EVERY}"]  # the shipped configs' monitor (val/...) stays
# ViT: 6 batches of 32 digits per epoch (192 images), 2 epochs = 12 steps; dropout, drop-path
# and the random-crop augmentation all draw random numbers.
VIT = ["-c", MNIST, "--model.network.init_args.preset=test",
       "--model.network.init_args.drop_rate=0.1", "--model.network.init_args.drop_path_rate=0.1",
       "--data.init_args.batch_size=32", "--data.init_args.augment=light",
       "--trainer.max_epochs=2", "--trainer.limit_train_batches=6", "--trainer.limit_val_batches=2"]
# LM: a short KJV prefix, 4 streams of 16-token windows; 2 epochs of dropout 0.1 with memory.
LM = ["-c", KJV, "--model.network.init_args.preset=test", "--model.network.init_args.vocab_size=300",
      "--model.network.init_args.dropout=0.1", "--data.init_args.vocab_size=300",
      "--data.init_args.max_chars=4000", "--data.init_args.batch_size=4",
      "--data.init_args.eval_batch_size=2", "--data.init_args.tgt_len=16",
      "--trainer.max_steps=-1", "--trainer.max_epochs=2", "--trainer.limit_train_batches=6",
      "--trainer.val_check_interval=null", "--trainer.check_val_every_n_epoch=1",
      "--trainer.limit_val_batches=2", "--model.init_args.warmup_steps=2"]
# MT: 300 number-word pairs in token batches of at most 256 tokens (about 18 an epoch, 6
# used), dropout 0.1, greedy decoding for the validation BLEU.
MT = ["-c", NUMBERS, "--model.network.init_args.preset=small", "--model.network.init_args.vocab_size=400",
      "--model.network.init_args.dropout=0.1", "--data.init_args.vocab_size=400",
      "--data.init_args.num_train=300", "--data.init_args.num_valid=12", "--data.init_args.num_test=12",
      "--data.init_args.max_tokens=256", "--data.init_args.eval_batch_size=8",
      "--data.init_args.max_number=300", "--model.init_args.beam=1", "--model.init_args.max_len_b=3",
      "--model.init_args.max_len_a=0.5", "--model.init_args.warmup_steps=2",
      "--trainer.max_steps=-1", "--trainer.max_epochs=2", "--trainer.limit_train_batches=6",
      "--trainer.val_check_interval=null", "--trainer.check_val_every_n_epoch=1",
      "--trainer.limit_val_batches=1"]
TASKS = {"vit": VIT, "lm": LM, "mt": MT}
# The kill comes 0 to KILL_WINDOW s after the checkpoint is seen: within the next steps (the
# tiny MT model's steps are much shorter), before the run ends.
KILL_WINDOW = {"vit": 0.3, "lm": 0.3, "mt": 0.05}


def _command(args: list[str], save_dir: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "mmkit", "fit", *args, *COMMON,
            f"--trainer.logger.init_args.save_dir={save_dir}",
            *(["--ckpt_path=last"] if resume else [])]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _start(args: list[str], save_dir: Path, resume: bool = False) -> subprocess.Popen:
    return subprocess.Popen(_command(args, save_dir, resume), cwd=save_dir, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(child: subprocess.Popen) -> None:
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]


def _last(save_dir: Path) -> Path:
    found = sorted(save_dir.glob("*/version_*/checkpoints/last.ckpt"))
    assert len(found) == 1, found
    return found[0]


def _step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except (OSError, RuntimeError, EOFError, KeyError):  # not there yet, or being replaced
        return -1


def _run_and_kill(args: list[str], save_dir: Path, at_step: int, resume: bool, window: float) -> int:
    """Start a fit, SIGKILL it once last.ckpt holds ``at_step`` or later; the step it held."""
    child = subprocess.Popen(_command(args, save_dir, resume), cwd=save_dir, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and child.poll() is None:
            found = list(save_dir.glob("*/version_*/checkpoints/last.ckpt"))
            if found and (step := _step(found[0])) >= at_step:
                time.sleep(random.Random(at_step).uniform(0.0, window))  # in the next step(s)
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                return step
            time.sleep(0.05)
        raise AssertionError(f"the run ended (status {child.poll()}) before step {at_step}")
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


def _rows(save_dir: Path) -> list[dict[str, str]]:
    """Every row of the run's metrics.csv, in order. The killed run's rows from after its last
    checkpoint are dropped on resume, so the resumed log must equal the uninterrupted one row
    for row: no repeated or lost step."""
    (metrics,) = save_dir.glob("*/version_*/metrics.csv")
    with open(metrics) as f:
        return [{k: v for k, v in r.items() if v} for r in csv.DictReader(f)]


def _assert_same_run(reference: Path, resumed: Path) -> None:
    ref = torch.load(_last(reference), map_location="cpu", weights_only=False)
    got = torch.load(_last(resumed), map_location="cpu", weights_only=False)
    assert got["global_step"] == ref["global_step"]
    assert got["state_dict"].keys() == ref["state_dict"].keys()
    differ = [k for k, v in ref["state_dict"].items() if not torch.equal(v, got["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ after resume, e.g. {differ[:3]}"
    assert _rows(resumed) == _rows(reference)


def _check(task: str, kill_steps: list[int], tmp_path: Path) -> None:
    args = TASKS[task]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference.mkdir()
    resumed.mkdir()
    uninterrupted = _start(args, reference)  # runs beside the killed one (1 thread each)
    try:
        for i, step in enumerate(kill_steps):
            assert _run_and_kill(args, resumed, step, resume=i > 0, window=KILL_WINDOW[task]) >= step
    finally:
        _finish(uninterrupted)
    _finish(_start(args, resumed, resume=True))
    _assert_same_run(reference, resumed)


# The default tests: one kill mid-epoch (after the checkpoint of step 3 of 6 per epoch); for
# MT after step 6, the last batch of epoch 0, before that epoch's validation: the resumed run
# runs it, and any RNG draw made by creating its loader would shift dropout's stream.
ONCE = [("vit", EVERY), ("lm", EVERY), ("mt", 2 * EVERY)]


@pytest.mark.parametrize("task, step", ONCE, ids=[t for t, _ in ONCE])
def test_killed_run_resumes_bit_identical(task: str, step: int, tmp_path: Path) -> None:
    _check(task, [step], tmp_path)


# Killed after the checkpoint of step 6 (the last batch of epoch 0: resumes into epoch 1),
# resumed, killed again after step 9 (mid-epoch 1) and resumed; or killed after step 9 only.
@pytest.mark.slow
@pytest.mark.parametrize("task", ["vit", "lm", "mt"])
@pytest.mark.parametrize("kills", [[6, 9], [9]], ids=["6-then-9", "9"])
def test_killed_twice_resumes_bit_identical(task: str, kills: list[int], tmp_path: Path) -> None:
    _check(task, kills, tmp_path)


# ----------------------------------------------------------------- the pieces, in-process
def test_sampler_skips_batches_of_the_next_epoch_only() -> None:
    data = list(range(37))
    sampler = ResumableSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip_batches(3, 4)
    assert list(sampler) == full[12:]
    assert list(sampler) == full  # only once
    seeded = ResumableSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5, seeded_samples=True)
    seeded.set_epoch(2)
    assert list(seeded) == [(i, sample_seed(5, 2, i)) for i in full]


def test_seeded_samples_leave_the_global_rng_alone() -> None:
    noisy = SeededSamples([None] * 4)
    noisy.dataset = _Noisy()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = noisy[(1, 77)], noisy[(2, 77)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and torch.equal(noisy[(3, 77)], a)  # the seed decides
    assert not torch.equal(noisy[(1, 78)], a)


class _Noisy:
    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(5)


def test_stream_windows_skip_and_rng_round_trip() -> None:
    streams = torch.randint(0, 50, (3, 41))  # [B, L]
    windows = StreamWindows(streams, 8)
    full = list(windows)
    windows.skip_batches(2)
    rest = list(windows)
    assert len(rest) == len(full) - 2
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(rest, full[2:]))
    states = rng_states()
    expected = torch.rand(4)
    torch.rand(10)
    set_rng_states(states)
    assert torch.equal(torch.rand(4), expected)
    np.random.seed(3)
    random.seed(4)
    states = rng_states()
    expected = (np.random.rand(3), random.random())
    np.random.rand(7)
    random.random()
    set_rng_states(torch.load(_saved(states), weights_only=True))  # as Lightning loads it
    assert (np.random.rand(3) == expected[0]).all() and random.random() == expected[1]


def _saved(obj: object) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_a_checkpoint_row_count_applies_only_to_its_own_log() -> None:
    """A resume cuts metrics.csv to the count its checkpoint recorded for that log: found by
    path, or by ``<name>/<version>`` when the run folder was moved; never another run's log."""
    from mmkit.cli.loggers import _count_for

    counts = {"runs/vit/version_0": 7}
    assert _count_for(counts, "runs/vit/version_0") == 7
    assert _count_for(counts, "/elsewhere/runs/vit/version_0") == 7  # moved
    assert _count_for(counts, "runs/vit/version_1") is None  # another run's checkpoint
    assert _count_for({}, "runs/vit/version_0") is None
