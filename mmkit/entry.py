"""The ``mmkit`` command.

- ``mmkit fit|validate|test|predict -c configs/vit/mnist.yaml [-c configs/normalizer/multimax.yaml]
  [--model.network.normalizer entmax15] [--ckpt_path last]``: Lightning's CLI over the
  mmkit tasks and data modules (:mod:`mmkit.cli`).
- ``mmkit ablate -c configs/ablation/quick.yaml``: a normalizer × seed × config grid,
  each cell a full fit then test, reported as a CSV, a table and a plot
  (:mod:`mmkit.ablation`, which is handed the CLI entry points).
- ``mmkit figures simplex|pareto|sigma|attention ...``: the analysis figures
  (:mod:`mmkit.cli.figures`).
- ``mmkit export --ckpt_path RUN/checkpoints/last.ckpt [--out DIR]``: the trained network as
  ``model.safetensors`` + ``config.json`` (:mod:`mmkit.cli.export`).
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
from .cli.export import main as export_main
from .cli.figures import main as figures_main
from .cli.helptext import COMMANDS, demo_help, main_help, normalizer_help, version_text


def _fit_or_evaluate(argv: list[str] | None) -> int:
    MMKitCLI(args=argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``mmkit <argv>`` (``sys.argv[1:]`` when ``None``); returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write(main_help())
        return 2
    if args[0] in ("-h", "--help"):
        sys.stdout.write(main_help())
        return 0
    if args[0] in ("-V", "--version"):
        sys.stdout.write(version_text())
        return 0
    if not args[0].startswith("-") and args[0] not in COMMANDS:
        sys.stderr.write(f"mmkit: error: unknown command {args[0]!r}; choose one of {', '.join(COMMANDS)} "
                         "(`mmkit --help` says what each does)\n")
        return 2
    if args[0] == "demo":
        if args[1:] and args[1] in ("-h", "--help"):
            sys.stdout.write(demo_help())
            return 0
        if len(args) > 1:
            sys.stderr.write(f"mmkit: error: `mmkit demo` takes no arguments, got {' '.join(args[1:])}\n")
            return 2
        sys.stdout.write(figure1_table() + "\n")
        return 0
    if args[0] == "figures":
        return figures_main(args[1:])
    if args[0] == "export":
        return export_main(args[1:])
    if args[0] == "ablate":
        return guarded(lambda: ablate_main(args[1:], CLIEntry(run=run, check=check_arguments)))
    try:
        text = normalizer_help(args)  # a normalizer option takes a spec, which jsonargparse cannot explain
    except ValueError as err:
        sys.stderr.write(f"mmkit: error: {err}\n")
        return 2
    if text is not None:
        sys.stdout.write(text)
        return 0
    return guarded(lambda: _fit_or_evaluate(argv))
