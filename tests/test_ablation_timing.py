"""A resumed cell's wall time counts its earlier attempts up to the checkpoint it resumed from."""

from __future__ import annotations

import math
import os

from mmkit.ablation.timing import earlier_attempts_s, timing


def test_a_fresh_start_has_no_earlier_time(tmp_path):
    assert earlier_attempts_s({"state": "failed", "started_unix": 5.0}, None) == 0.0


def test_earlier_attempts_count_up_to_the_resumed_checkpoint(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (1_000_300.0, 1_000_300.0))
    status = {"state": "interrupted", "started_unix": 1_000_000.0, "earlier_s": 50.0, "pid": 1}
    assert earlier_attempts_s(status, ckpt) == 350.0  # 50 s before, 300 s up to the save
    assert timing(status) == {"started_unix": 1_000_000.0, "earlier_s": 50.0}
    # a checkpoint older than the attempt's start (written by an earlier attempt) adds nothing
    assert earlier_attempts_s({**status, "started_unix": 1_000_400.0}, ckpt) == 50.0


def test_an_attempt_without_a_recorded_start_makes_the_time_unknown(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"x")
    assert math.isnan(earlier_attempts_s({"state": "interrupted"}, ckpt))
    assert math.isnan(earlier_attempts_s({"started_unix": 1.0, "earlier_s": None}, ckpt))
