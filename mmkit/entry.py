"""The ``mmkit`` command.

- ``mmkit fit|validate|test|predict -c configs/vit/mnist.yaml [-c configs/normalizer/multimax.yaml]
  [--model.network.normalizer entmax15] [--ckpt_path last]``: Lightning's CLI over the
  mmkit tasks and data modules (:mod:`mmkit.cli`).
- ``mmkit ablate -c configs/ablation/quick.yaml``: a normalizer × seed × config grid,
  each cell a full fit then test, reported as a CSV, a table and a plot
  (:mod:`mmkit.ablation`, which is handed the CLI entry points).
- ``mmkit figures simplex|pareto|sigma|attention ...``: the analysis figures
  (:mod:`mmkit.cli.figures`).
- ``mmkit demo``: every normalizer on the paper's Figure 1 input.

User errors (a bad value, a missing file) end with one line on stderr and exit
status 2; set ``MMKIT_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import sys

from .ablation.command import main as ablate_main
from .ablation.runner import CLIEntry
from .analysis.figure1 import figure1_table
from .cli import MMKitCLI, check_arguments, guarded, run
from .cli.figures import main as figures_main


def _fit_or_evaluate(argv: list[str] | None) -> int:
    MMKitCLI(args=argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``mmkit <argv>`` (``sys.argv[1:]`` when ``None``); returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        if len(args) > 1:
            sys.stderr.write(f"mmkit: error: `mmkit demo` takes no arguments, got {' '.join(args[1:])}\n")
            return 2
        sys.stdout.write(figure1_table() + "\n")
        return 0
    if args[:1] == ["figures"]:
        return figures_main(args[1:])
    if args[:1] == ["ablate"]:
        return guarded(lambda: ablate_main(args[1:], CLIEntry(run=run, check=check_arguments)))
    return guarded(lambda: _fit_or_evaluate(argv))
