"""A resumed cell's wall time counts its earlier attempts up to the checkpoint it resumed from,
by the times the cell's status and the checkpoint record (never file times)."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mmkit.ablation.parallel import run_subprocess
from mmkit.ablation.runner import CellInterrupted
from mmkit.ablation.timing import earlier_attempts_s, saved_unix, timing


def checkpoint(tmp_path: Path, saved: float | None) -> Path:
    path = tmp_path / f"saved-{saved}.ckpt"
    torch.save({"state_dict": {}, "mmkit": {} if saved is None else {"saved_unix": saved}}, path)
    return path


def test_a_fresh_start_has_no_earlier_time():
    assert earlier_attempts_s({"state": "failed", "started_unix": 5.0}, None) == 0.0


def test_earlier_attempts_count_up_to_the_resumed_checkpoints_save(tmp_path):
    status = {"state": "interrupted", "started_unix": 1_000_000.0, "earlier_s": 50.0, "pid": 1}
    # 50 s before, 300 s to the save
    assert earlier_attempts_s(status, checkpoint(tmp_path, 1_000_300.0)) == 350.0
    assert timing(status) == {"started_unix": 1_000_000.0, "earlier_s": 50.0}
    # a checkpoint an even earlier attempt saved adds nothing for the last attempt
    assert earlier_attempts_s(status, checkpoint(tmp_path, 999_000.0)) == 50.0


def test_an_unknown_time_makes_the_cells_time_unknown(tmp_path):
    saved = checkpoint(tmp_path, 5.0)
    assert math.isnan(earlier_attempts_s({"state": "interrupted"}, saved))
    assert math.isnan(earlier_attempts_s({"started_unix": 1.0, "earlier_s": None}, saved))
    assert math.isnan(earlier_attempts_s({"started_unix": 1.0, "earlier_s": 0.0}, checkpoint(tmp_path, None)))


def test_the_save_time_comes_from_the_checkpoint_record_not_the_file(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "mmkit": {"saved_unix": 1_000_300.0}}, ckpt)
    os.utime(ckpt, (2_000_000.0, 2_000_000.0))  # e.g. a copy that did not keep file times
    assert saved_unix(ckpt) == 1_000_300.0
    torch.save({"state_dict": {}}, ckpt)  # an older mmkit's checkpoint
    assert saved_unix(ckpt) is None
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert saved_unix(tmp_path / "bad.ckpt") is None


class _Child:
    pid = 4242


class _SignalledChildren:
    """A child that the forwarded SIGTERM ended with exit status -15."""

    signum = signal.SIGTERM

    def start(self, cmd, log, env):
        return _Child()

    def wait(self, child):
        return -signal.SIGTERM


def _cell(tmp_path: Path, status: dict) -> SimpleNamespace:
    folder = tmp_path / "cell"
    folder.mkdir()
    (folder / "status.json").write_text(json.dumps(status))

    def read() -> dict:
        return json.loads((folder / "status.json").read_text())

    def write(state: str, **info) -> None:
        (folder / "status.json").write_text(json.dumps({"state": state, **info}))

    return SimpleNamespace(id="c", dir=folder, status=read, set_status=write, result=lambda: None)


def test_the_parent_marks_its_signalled_child_interrupted_and_keeps_its_clock(tmp_path):
    cell = _cell(tmp_path, {"state": "running", "pid": _Child.pid, "started_unix": 7.0, "earlier_s": 3.0})
    with pytest.raises(CellInterrupted):
        run_subprocess(cell, Path("grid.yaml"), None, _SignalledChildren())
    status = cell.status()
    assert status["state"] == "interrupted" and status["signal"] == "SIGTERM"
    assert timing(status) == {"started_unix": 7.0, "earlier_s": 3.0}


@pytest.mark.parametrize("before", [{"state": "failed", "error": "x"},
                                    {"state": "running", "pid": 1, "started_unix": 7.0, "earlier_s": 0.0}])
def test_a_child_signalled_before_it_began_leaves_the_cells_state_alone(tmp_path, before):
    # a failed cell must start again from scratch, not resume the failed attempt's checkpoint
    cell = _cell(tmp_path, before)
    with pytest.raises(CellInterrupted):
        run_subprocess(cell, Path("grid.yaml"), None, _SignalledChildren())
    assert cell.status() == before
