"""Kept for old command lines: ``python tools/figures.py ...`` is ``mmkit figures ...``
(:mod:`mmkit.cli.figures`)."""

import sys

from mmkit.cli.figures import main

if __name__ == "__main__":
    sys.exit(main())
