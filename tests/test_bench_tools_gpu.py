"""The GPU benchmark scripts answer --help and stop with a clear message without CUDA.

They run as subprocesses; ``CUDA_VISIBLE_DEVICES=""`` hides any GPU, so the no-CUDA
path is checked on GPU machines too. Nothing is timed here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).parents[1] / "tools"
SCRIPTS = {"bench_attention.py": ["--quick"], "bench_step.py": ["--batch-size", "2", "--steps", "1"]}


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(TOOLS / script), *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_help(script):
    res = run(script, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage:" in res.stdout and "CUDA" in res.stdout


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_exits_clearly_without_cuda(script):
    res = run(script, *SCRIPTS[script])
    assert res.returncode != 0
    assert "needs a CUDA GPU" in res.stderr
    assert "Traceback" not in res.stderr
