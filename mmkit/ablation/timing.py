"""A cell's wall time over all its attempts.

A cell that an interrupt stopped resumes from its checkpoint, so its time is that of the
earlier attempts up to the checkpoint it resumed from, plus the last attempt's. Each attempt
records when it started (``started_unix``) and what the attempts before it had spent
(``earlier_s``) in the cell's status, and an interrupted status keeps both; every mmkit
checkpoint records when it was saved (``saved_unix``, on the same host's clock). File times
are not used: a copied grid's files carry the time of the copy. When either time is unknown
(an attempt under an mmkit that did not record it), the cell's time is unknown too:
``wall_s`` is NaN and the report leaves it out of the time ratios.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..cli.provenance import RECORD_KEY
from ..files import read_checkpoint

TIMING_KEYS = ("started_unix", "earlier_s")


def timing(status: dict[str, Any]) -> dict[str, Any]:
    """The timing fields of a cell's status, to carry into the status that replaces it."""
    return {key: status[key] for key in TIMING_KEYS if key in status}


def saved_unix(checkpoint: Path) -> float | None:
    """When ``checkpoint`` was saved, as its mmkit record says; ``None`` when it records no
    time or cannot be read (the fit that resumes from it then says what is wrong)."""
    try:
        ckpt = read_checkpoint(checkpoint)
    except (OSError, ValueError):
        return None
    record = ckpt.get(RECORD_KEY)
    saved = record.get("saved_unix") if isinstance(record, dict) else None
    return float(saved) if isinstance(saved, (int, float)) else None


def earlier_attempts_s(previous: dict[str, Any], resume: Path | None) -> float:
    """Seconds the attempts before this one (their last status: ``previous``) spent on what the
    checkpoint this attempt resumes from holds: 0 for a fresh start, NaN when a time is unknown."""
    if resume is None:
        return 0.0
    started, earlier, saved = previous.get("started_unix"), previous.get("earlier_s", 0.0), saved_unix(resume)
    if started is None or earlier is None or saved is None:
        return math.nan
    # a checkpoint an even earlier attempt saved holds none of the last attempt's time
    return float(earlier) + max(0.0, saved - float(started))
