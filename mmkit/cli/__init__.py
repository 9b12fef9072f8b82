"""The CLI runtime: Lightning's CLI with mmkit's defaults and checks (:mod:`.app`), its
one-line errors (:mod:`.errors`), crash-safe checkpoints (:mod:`.checkpointing`), exact resume
(:mod:`.resume`), run callbacks (:mod:`.callbacks`), the CSV logger (:mod:`.loggers`), what a
checkpoint records (:mod:`.provenance`) and run directories (:mod:`.runs`).

Lightning is imported here, in ``tasks/``, ``data/``, ``analysis/``'s callback and
``ablation/``, and nowhere below them. The ``mmkit`` command (with ``ablate`` and ``demo``)
is :mod:`mmkit.entry`, which sits above this package and :mod:`mmkit.ablation`.
"""

from .app import MMKitCLI, check_arguments, guarded, run

__all__ = ["MMKitCLI", "check_arguments", "guarded", "run"]
