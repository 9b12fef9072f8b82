"""The benchmark script runs end to end on tiny shapes (it is not timed here)."""

import importlib.util
from pathlib import Path


def test_bench_normalizers_runs_on_tiny_shapes():
    path = Path(__file__).parents[1] / "tools" / "bench_normalizers.py"
    spec = importlib.util.spec_from_file_location("bench_normalizers", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = bench.bench(n=16, bh=2, device="cpu", repeats=1, scale=1.0)
    table = "\n".join(lines)
    assert "| torch.softmax |" in table and "| mmkit multimax |" in table
    assert "faster)" in table  # the entmax-package comparison column is filled


def test_bench_lm_runs_on_a_tiny_model():
    import subprocess
    import sys

    path = Path(__file__).parents[1] / "tools" / "bench_lm.py"
    out = subprocess.run([sys.executable, str(path), "--preset", "test", "--vocab", "64",
                          "--batch", "2", "--tgt-len", "8", "--rounds", "1", "--steps", "1"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "| softmax |" in out and "| multimax |" in out and "1.00x" in out
