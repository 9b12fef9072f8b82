"""Keep Lightning's advertising tips and known deprecation noise out of mmkit's output.

Only messages mmkit users cannot act on are dropped: the "💡 Tip: ... try installing
litlogger/litmodels" lines, the ``isinstance(treespec, LeafSpec)`` deprecation raised inside
Lightning itself, and the note that ``LightningCLI(args=...)`` is meant for Python use (mmkit
passes the command line that way on purpose). Everything else Lightning says is kept.
"""

from __future__ import annotations

import logging
import warnings

RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
NOISY_WARNINGS = (r"`?isinstance\(treespec, LeafSpec\)`? is deprecated",
                  r"LightningCLI's args parameter is intended to run from within Python")


class _NoAdvertising(logging.Filter):
    """Drops Lightning's "💡 Tip" lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith("💡")


_FILTER = _NoAdvertising()


def quiet_lightning() -> None:
    """Install the filters (idempotent)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
