"""Running one cell in this process (several at once as subprocesses: :mod:`.parallel`).

Every cell goes through the CLI entry points it is handed (:class:`CLIEntry`: ``mmkit fit``
and ``mmkit test`` exactly as the command runs them; the runner does not import the CLI).
Its state is kept in ``status.json`` and its metrics in ``result.json`` (both written
atomically), so a rerun skips finished cells and retries failed or interrupted ones, and one
failing cell never costs another's results. An interrupted cell resumes from its
``last.ckpt`` when there is one; a failed one starts again from scratch (its old files are
removed).

A cell's metrics are what ``trainer.test()`` returned, and the validation metrics its
``last.ckpt`` records (:mod:`mmkit.cli.provenance`), so any logger, or several, may be used.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli.callbacks import Interrupted, clear_stop, stop_requested
from ..cli.provenance import RECORD_KEY
from ..files import pid_alive, read_checkpoint, write_json_atomic
from .grid import Cell
from .timing import earlier_attempts_s

KEEP_ON_RETRY = ("log.txt",)  # a parallel cell's log, which the parent process holds open


@dataclass(frozen=True)
class CLIEntry:
    """What the runner needs of the ``mmkit`` command, handed to it by :mod:`mmkit.entry`:
    ``run(args)`` runs ``mmkit <args>`` in this process and returns what the trainer returned;
    ``check(args)`` parses ``mmkit <args>`` without building anything and raises its error."""

    run: Callable[[list[str]], Any]
    check: Callable[[list[str]], None]


def is_running_elsewhere(cell: Cell) -> bool:
    """True when another live process on this host is running ``cell`` right now."""
    status = cell.status()
    return (status["state"] == "running" and status.get("host") == socket.gethostname()
            and status.get("pid") not in (None, os.getpid()) and pid_alive(status["pid"]))


def resume_checkpoint(cell: Cell) -> Path | None:
    """The newer of the cell's ``last.ckpt`` and a ``hpc_ckpt_*.ckpt`` SLURM saved in the cell."""
    found = [p for p in (cell.ckpt_dir / "last.ckpt", *cell.dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def prepare(cell: Cell) -> str:
    """Get ``cell`` ready to (re)run; returns how: ``fresh``, ``resume`` or ``retry``."""
    state = cell.status()["state"]
    if state in ("running", "interrupted") and resume_checkpoint(cell) is not None:
        return "resume"
    if state in ("failed", "running", "interrupted"):
        _clear(cell.dir)
        return "retry"
    return "fresh"


def _clear(folder: Path) -> None:
    """Remove what a previous attempt left in ``folder`` (its log excepted)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name in KEEP_ON_RETRY:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _last_record(cell: Cell) -> dict[str, Any]:
    last = cell.ckpt_dir / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(f"fit of {cell.id} left no {last}")
    ckpt = read_checkpoint(last)
    try:
        record = ckpt.get(RECORD_KEY) or {}
        best = next((value.get("best_model_path") for key, value in (ckpt.get("callbacks") or {}).items()
                     if "ModelCheckpoint" in str(key) and isinstance(value, dict)), None)
        return {"val_metrics": dict(record.get("val_metrics") or {}), "best": best}
    finally:
        del ckpt


def test_checkpoint(cell: Cell, record: dict[str, Any]) -> Path:
    """The checkpoint to test: the monitored best (``record`` of ``last.ckpt``) or last."""
    best = record["best"]
    if cell.spec.test_ckpt == "best" and best and Path(best).is_file():
        return Path(best)
    return cell.ckpt_dir / "last.ckpt"


def read_metrics(path: Path) -> tuple[dict[str, float], list[dict[str, str]]]:
    """The last logged value of every column of a CSV log, and all its rows."""
    if not path.is_file():
        return {}, []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    last: dict[str, float] = {}
    for row in rows:
        for key, value in row.items():
            if key and value not in (None, ""):
                try:
                    last[key] = float(value)
                except ValueError:
                    pass
    return last, rows


def check_cells(cells: list[Cell], cli: CLIEntry) -> None:
    """Parse every cell's full ``mmkit fit`` arguments (one seed per config and normalizer: the
    seed changes nothing else) before anything runs: a typo in the grid's ``args`` or a broken
    overlay is one line naming the cell, not a failure of every cell in turn."""
    seen = set()
    for cell in cells:
        if (cell.config, cell.overlay) in seen:
            continue
        seen.add((cell.config, cell.overlay))
        try:
            cli.check(["fit", *cell.cli_args()])
        except Exception as err:
            text = " ".join(str(err).split()) or type(err).__name__
            raise ValueError(f"cell {cell.id} would fail: {text}") from err


def run_in_process(cell: Cell, cli: CLIEntry, display: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``mmkit fit`` then ``mmkit test`` for ``cell`` in this process; returns its result."""
    previous = cell.status()
    how = prepare(cell)
    resume = resume_checkpoint(cell) if how == "resume" else None
    clocks = {"started_unix": time.time(), "earlier_s": earlier_attempts_s(previous, resume)}
    clear_stop()
    cell.record_definition()
    cell.set_status("running", pid=os.getpid(), host=socket.gethostname(), how=how,
                    started=time.strftime("%Y-%m-%d %H:%M:%S"), **clocks)
    start = time.perf_counter()
    try:
        cli.run(["fit", *cell.cli_args(display), *([f"--ckpt_path={resume}"] if resume else [])])
        record = _last_record(cell)  # the test leaves last.ckpt as the fit wrote it
        ckpt = test_checkpoint(cell, record)
        tested = cli.run(["test", *cell.cli_args(display), f"--ckpt_path={ckpt}"])
        test_metrics = {k: float(v) for output in tested or [] for k, v in output.items()
                        if k.startswith("test/")}
        val_metrics = record["val_metrics"]
    except (Exception, SystemExit, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, Interrupted) else stop_requested()
        if signum is not None:  # a signal, not a failure: the rerun resumes the cell
            cell.set_status("interrupted", signal=signal.Signals(signum).name, error=str(err),
                            pid=os.getpid(), host=socket.gethostname(), **clocks)
            raise CellInterrupted(cell, signum) from err
        if isinstance(err, KeyboardInterrupt):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        (cell.dir / "error.txt").write_text(traceback.format_exc())
        cell.set_status("failed", error=f"{type(err).__name__}: {message}",
                        log=str(cell.dir / "error.txt"))
        raise CellFailed(cell, message) from err
    wall_s = clocks["earlier_s"] + time.perf_counter() - start  # NaN when an earlier attempt's is unknown
    return finish(cell, wall_s, ckpt, {**val_metrics, **test_metrics})


def finish(cell: Cell, wall_s: float, ckpt: Path, metrics: dict[str, float]) -> dict[str, Any]:
    if not any(k.startswith("test/") for k in metrics):
        cell.set_status("failed", error="the test returned no test/ metrics")
        raise CellFailed(cell, "the test returned no test/ metrics")
    result = {"id": cell.id, "config": cell.config, "normalizer": cell.normalizer, "seed": cell.seed,
              **metrics, "wall_s": round(wall_s, 1), "ckpt": str(ckpt)}
    write_json_atomic(cell.dir / "result.json", result)
    cell.set_status("done", wall_s=round(wall_s, 1), pid=os.getpid(), host=socket.gethostname())
    return result


class CellFailed(RuntimeError):
    def __init__(self, cell: Cell, message: str) -> None:
        super().__init__(f"{cell.id}: {message}")
        self.cell = cell


class CellInterrupted(Exception):
    """A signal stopped ``cell``; the grid stops too (exit status ``code``), and a rerun
    resumes the cell from its checkpoint."""

    def __init__(self, cell: Cell | None, signum: int) -> None:
        name = signal.Signals(signum).name
        what = cell.id if cell is not None else "the grid between two cells"
        super().__init__(f"{name} interrupted {what}; rerun the same command to resume it")
        self.cell, self.code = cell, 128 + signum
