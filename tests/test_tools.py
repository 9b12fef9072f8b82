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
