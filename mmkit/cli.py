"""The ``mmkit`` command.

``mmkit demo`` prints every normalizer on the paper's Figure 1 input. Training
subcommands (``fit``, ``validate``, ``test``, ``predict``, ``ablate``) arrive with
the tasks.
"""

from __future__ import annotations

import argparse
import sys


def _demo(_: argparse.Namespace) -> int:
    from .analysis.figure1 import figure1_table

    sys.stdout.write(figure1_table() + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("demo", help="print every normalizer on the paper's Figure 1 input").set_defaults(
        func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
