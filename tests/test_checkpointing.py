"""Crash-safe checkpoints (temp file + fsync + os.replace) and one-line errors for
truncated, corrupt or foreign checkpoints given to `mmkit fit/test --ckpt_path`."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

from mmkit.cli import MMKitCLI
from mmkit.cli.checkpointing import (
    AtomicCheckpointIO,
    AtomicModelCheckpoint,
    atomic_torch_save,
    check_checkpoint,
    install_atomic_checkpoint_io,
)
from mmkit.entry import main
from mmkit.files import TEMP_PREFIX

from .test_cli import MNIST, fast

ROOT = Path(__file__).resolve().parents[1]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    old = {"w": torch.randn(64, 32)}
    AtomicCheckpointIO().save_checkpoint(old, path)
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.randn(64, 32)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert same(torch.load(path), old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the temp file is gone
    new = {"w": torch.randn(8)}
    AtomicCheckpointIO().save_checkpoint(new, path)
    assert same(torch.load(path), new)


def test_sigkill_during_a_save_leaves_the_old_checkpoint_usable(tmp_path):
    """A subprocess saves hpc_ckpt_1.ckpt, then is SIGKILLed while overwriting it."""
    marker = tmp_path / "saving"
    script = textwrap.dedent(f"""
        import time, torch
        from mmkit.cli.checkpointing import AtomicCheckpointIO

        class Slow:
            def __reduce__(self):
                open({str(marker)!r}, "w").close()
                time.sleep(60)
                return (int, ())

        io = AtomicCheckpointIO()
        torch.manual_seed(1)
        io.save_checkpoint({{"w": torch.randn(1000, 100)}}, {str(tmp_path / "hpc_ckpt_1.ckpt")!r})
        io.save_checkpoint({{"w": torch.randn(1000, 100), "slow": Slow()}},
                           {str(tmp_path / "hpc_ckpt_1.ckpt")!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the save never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    torch.manual_seed(1)
    assert torch.equal(torch.load(tmp_path / "hpc_ckpt_1.ckpt")["w"], torch.randn(1000, 100))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(leftovers) == 1 and "hpc_ckpt_" not in leftovers[0] and ".ckpt" not in leftovers[0]
    # Lightning's SLURM resume and "last" lookups do not mistake the partial file for a checkpoint.
    assert _CheckpointConnector.hpc_save_path(tmp_path) == str(tmp_path / "hpc_ckpt_2.ckpt")


def test_last_symlink_is_replaced_atomically(tmp_path):
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda: None))
    target = tmp_path / "epoch=1.ckpt"
    torch.save({"w": torch.randn(3)}, target)
    last = tmp_path / "last.ckpt"
    torch.save({"w": torch.randn(3)}, last)  # an old full copy
    AtomicModelCheckpoint._link_checkpoint(trainer, str(target), str(last))
    assert last.is_symlink() and os.readlink(last) == "epoch=1.ckpt"
    assert same(torch.load(last), torch.load(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=1.ckpt", "last.ckpt"]


def test_atomic_io_is_installed_unless_the_user_brings_one():
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
              "enable_model_summary": False}
    plain = Trainer(**kwargs)
    install_atomic_checkpoint_io(plain)
    assert type(plain.strategy.checkpoint_io) is AtomicCheckpointIO
    mine = AsyncCheckpointIO(TorchCheckpointIO())
    custom = Trainer(plugins=[mine], **kwargs)
    install_atomic_checkpoint_io(custom)
    assert custom.strategy.checkpoint_io is mine


def test_atomic_torch_save_writes_through_a_new_file(tmp_path):
    """The target's inode changes (a rename), so readers never see a half-rewritten file."""
    path = tmp_path / "x.ckpt"
    first = {"w": torch.randn(5)}
    atomic_torch_save(first, path)
    with open(path, "rb") as reader:  # an open reader keeps the complete old version
        inode = os.fstat(reader.fileno()).st_ino
        atomic_torch_save({"w": torch.randn(5)}, path)
        assert os.stat(path).st_ino != inode
        assert same(torch.load(reader), first)


# --- one clear line for bad checkpoints ---------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real 1-step ViT (preset test, softmax) run; its directory holds checkpoints/last.ckpt."""
    tmp = tmp_path_factory.mktemp("fit")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        cli = MMKitCLI(args=["fit", "-c", MNIST, *fast(tmp, steps=1)])
    finally:
        os.chdir(cwd)
    return Path(cli.trainer.logger.log_dir)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


def fails_with(args: list[str], tmp_path: Path, capsys, *needles: str) -> str:
    save_dir = tmp_path / "logs"
    assert main([args[0], "-c", MNIST, *fast(save_dir, steps=1), *args[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit: error: checkpoint "), err
    for needle in needles:
        assert needle in err[0], err[0]
    assert not save_dir.exists() or not any(save_dir.rglob("*.ckpt"))  # nothing new was saved
    return err[0]


@pytest.mark.parametrize("command", ["fit", "test"])
def test_truncated_checkpoint_is_one_clear_line(command, run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    before = snapshot(run)
    fails_with([command, "--ckpt_path", str(bad)], tmp_path, capsys, "unreadable", "truncated or corrupt")
    assert snapshot(run) == before and bad.read_bytes() == data[: len(data) // 2]


def test_garbage_and_empty_files_are_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(random.Random(0).randbytes(4096))  # fixed bytes: a reproducible test
    fails_with(["test", "--ckpt_path", str(garbage)], tmp_path, capsys, "unreadable")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    fails_with(["fit", "--ckpt_path", str(empty)], tmp_path, capsys, "the file is empty")
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.randn(3)}, plain)
    fails_with(["test", "--ckpt_path", str(plain)], tmp_path, capsys, "no 'state_dict'")


def legacy_copy(ckpt: Path, dest: Path) -> Path:
    """A copy of ``ckpt`` without the recorded run definition, as older mmkit versions wrote them:
    only its weights' names and shapes can be checked."""
    state = torch.load(ckpt, weights_only=True)
    state.pop("mmkit")
    state["hyper_parameters"].pop("network")
    torch.save(state, dest)
    return dest


def test_checkpoint_of_another_normalizer_names_the_keys(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = legacy_copy(run / "checkpoints" / "last.ckpt", run / "checkpoints" / "legacy.ckpt")
    before = snapshot(run)
    line = fails_with(["test", "--ckpt_path", str(old), "--model.network.normalizer=multimax"],
                      tmp_path, capsys,
                      "does not fit this model", "missing keys", "different normalizer",
                      str(run / "config.yaml"))
    assert "normalizer.ranges" in line or "normalizer.ts" in line
    assert snapshot(run) == before


def test_checkpoint_of_another_size_names_the_shapes(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = legacy_copy(run / "checkpoints" / "last.ckpt", tmp_path / "legacy.ckpt")
    line = fails_with(["fit", "--ckpt_path", str(old), "--model.network.init_args.patch_size=4"],
                      tmp_path, capsys,
                      "does not fit this model", "shape mismatch", "different model or config")
    assert " vs " in line


def test_a_recorded_definition_is_checked_before_the_weights(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(run)
    line = fails_with(["fit", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                       "--model.network.init_args.patch_size=4"], tmp_path, capsys,
                      "was trained as a different model than this config asks for",
                      "network.patch_size: checkpoint 7 vs config 4", str(run / "config.yaml"))
    assert "shape" not in line
    assert snapshot(run) == before


def test_a_matching_checkpoint_passes_the_check(run):
    cli = MMKitCLI(args=["-c", MNIST, "--model.network.init_args.preset=test"], run=False)
    check_checkpoint(run / "checkpoints" / "last.ckpt", cli.model, fitting=True)
    weights = {k: v for k, v in torch.load(run / "checkpoints" / "last.ckpt", weights_only=False).items()
               if k not in ("optimizer_states", "loops")}
    only = run.parent / "weights_only.ckpt"
    torch.save(weights, only)
    check_checkpoint(only, cli.model)
    with pytest.raises(ValueError, match="holds model weights only"):
        check_checkpoint(only, cli.model, fitting=True)


def test_a_save_removes_the_partial_files_of_dead_writers(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that no longer exists
    old = time.time() - 3600
    stale = tmp_path / f"{TEMP_PREFIX}{gone.pid}-0a1b2c3d.tmp"
    fresh = tmp_path / f"{TEMP_PREFIX}{gone.pid}-0a1b2c3e.tmp"  # may still be mid-write elsewhere
    alive = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-0a1b2c3f.tmp"
    for path in (stale, fresh, alive):
        path.write_bytes(b"x" * 100)
    for path in (stale, alive):
        os.utime(path, (old, old))
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    assert not stale.exists() and fresh.exists() and alive.exists()
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.ones(2))
