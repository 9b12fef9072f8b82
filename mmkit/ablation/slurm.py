"""Hand an ablation to SLURM as a job array: array task ``i`` runs cell ``i``.

``mmkit ablate -c grid.yaml --slurm true [--dry_run true] [--sbatch "--gres=gpu:1" ...]``
writes ``<root>/slurm/array.sbatch`` and submits it with ``sbatch`` (or, with
``--dry_run``, prints the command). Each task runs
``mmkit ablate -c <root>/ablation.yaml --cell <i>``; cells that are already done are
skipped, so resubmitting the array retries only what failed. Once the array has
finished, rerun the plain ``mmkit ablate -c grid.yaml`` to write the table and plot.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ..files import write_text_atomic
from .grid import AblationSpec


def array_script(spec: AblationSpec, grid_yaml: Path, todo: list[int], sbatch: list[str]) -> str:
    """The job-array script for the cells whose indices are ``todo``."""
    root = spec.root.resolve()
    array = ",".join(str(i) for i in todo)
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=mmkit-{spec.name}",
             f"#SBATCH --array={array}",
             f"#SBATCH --output={root}/slurm/%A_%a.out",
             "#SBATCH --signal=SIGUSR1@90",
             "#SBATCH --requeue",
             "#SBATCH --open-mode=append",
             *[f"#SBATCH {option}" for option in sbatch],
             "set -euo pipefail",
             f"cd {shlex.quote(str(Path.cwd()))}",
             f"srun {shlex.quote(sys.executable)} -m mmkit ablate"
             f" -c {shlex.quote(str(grid_yaml.resolve()))}"
             ' --cell "$SLURM_ARRAY_TASK_ID"',  # not a terminal: plain progress lines in the .out
             ""]
    return "\n".join(lines)


def submit(spec: AblationSpec, grid_yaml: Path, todo: list[int], sbatch: list[str], dry_run: bool) -> str:
    """Write the array script and submit it (or return the command, for ``dry_run``)."""
    script = spec.root / "slurm" / "array.sbatch"
    write_text_atomic(script, array_script(spec, grid_yaml, todo, sbatch))
    command = ["sbatch", str(script)]
    if dry_run:
        return shlex.join(command)
    if shutil.which("sbatch") is None:
        raise FileNotFoundError("sbatch is not on PATH: run this on a SLURM login node, or use "
                                "--dry_run true to only write the script")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return done.stdout.strip()
