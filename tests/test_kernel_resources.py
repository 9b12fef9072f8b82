"""tools/kernel_resources.py compiles the flash kernels for sm_90 on a CPU machine."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "tools" / "kernel_resources.py"


@pytest.mark.slow
def test_reports_registers_and_spills_for_every_kernel():
    pytest.importorskip("triton")
    res = subprocess.run([sys.executable, str(SCRIPT), "--head-dims", "64"], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| ") and "regs" in line]
    kernels = [row.split("|")[1].strip() for row in rows]
    assert kernels == ["forward", "dq", "dk/dv", "one-pass backward"], res.stdout
    for row in rows:
        regs = int(row.split("regs ")[1].split(",")[0])
        assert 0 < regs <= 255, row
