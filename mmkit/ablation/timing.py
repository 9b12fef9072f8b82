"""A cell's wall time over all its attempts.

A cell that an interrupt stopped resumes from its checkpoint, so its time is that of the
earlier attempts up to the checkpoint it resumed from, plus the last attempt's. Each attempt
records when it started (``started_unix``) and what the attempts before it had spent
(``earlier_s``) in the cell's status, and an interrupted status keeps both. When an earlier
attempt's start is unknown (it ran under an mmkit that did not record it), the cell's time is
unknown too: ``wall_s`` is NaN and the report leaves it out of the time ratios.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TIMING_KEYS = ("started_unix", "earlier_s")


def timing(status: dict[str, Any]) -> dict[str, Any]:
    """The timing fields of a cell's status, to carry into the status that replaces it."""
    return {key: status[key] for key in TIMING_KEYS if key in status}


def earlier_attempts_s(previous: dict[str, Any], resume: Path | None) -> float:
    """Seconds the attempts before this one spent on what ``resume`` holds: 0 for a fresh
    start, NaN when an earlier attempt did not record its start."""
    if resume is None:
        return 0.0
    started, earlier = previous.get("started_unix"), previous.get("earlier_s", 0.0)
    if started is None or earlier is None:
        return math.nan
    return float(earlier) + max(0.0, resume.stat().st_mtime - float(started))
