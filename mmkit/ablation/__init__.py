"""``mmkit ablate``: a grid of base configs × normalizers × seeds, each cell a full
``mmkit fit`` then ``mmkit test``, reported as a CSV, a Markdown table and a plot.
See :mod:`mmkit.ablation.command` for the command line and
:mod:`mmkit.ablation.grid` for the on-disk layout."""

from .grid import ALL_NORMALIZERS, AblationSpec, Cell

__all__ = ["ALL_NORMALIZERS", "AblationSpec", "Cell"]
