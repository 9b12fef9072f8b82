"""Cells as child processes, several at once: each runs ``mmkit ablate --cell`` with its
share of the CPU threads (or its own device), a signal to the grid is passed on to every
running cell, and no further cell starts after one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import Any

from .grid import Cell
from .runner import CellFailed, CellInterrupted
from .timing import timing

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch's intra-op threads follow OMP's


class _Children:
    """The running cell processes of :func:`run_parallel`. A SIGINT or SIGTERM to the grid is
    passed on to each of them once (they run in their own session, so a terminal's Ctrl-C
    reaches them only this way), and no further cell starts."""

    def __init__(self) -> None:
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.signum: int | None = None

    def start(self, cmd: list[str], log, env: dict[str, str]) -> subprocess.Popen | None:
        with self.lock:
            if self.signum is not None:
                return None
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
            self.running.add(child)
            return child

    def wait(self, child: subprocess.Popen) -> int:
        try:
            return child.wait()
        finally:
            with self.lock:
                self.running.discard(child)

    def forward(self, signum: int, frame: Any = None) -> None:
        with self.lock:
            self.signum = self.signum or signum
            for child in self.running:
                if child.poll() is None:
                    child.send_signal(signum)


def cell_threads(jobs: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread limits each of ``jobs`` cells running at once gets, so that together they do
    not oversubscribe the cores: :data:`THREAD_VARS` = ``os.cpu_count() // jobs`` (at least 1).
    Empty when ``jobs`` is 1 or the user set any of them (``environ``, default ``os.environ``):
    their setting then holds for every cell."""
    environ = os.environ if environ is None else environ
    if jobs <= 1 or any(environ.get(name) for name in THREAD_VARS):
        return {}
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    return dict.fromkeys(THREAD_VARS, threads)


def describe_threads(jobs: int, environ: Mapping[str, str] | None = None) -> str:
    """How many threads each of ``jobs`` parallel cells uses, and why (for the grid's log)."""
    environ = os.environ if environ is None else environ
    limits = cell_threads(jobs, environ)
    if limits:
        threads = limits[THREAD_VARS[0]]
        return (f"{jobs} cells at once, {threads} thread{'s' if threads != '1' else ''} each "
                f"({os.cpu_count()} cores; {'/'.join(THREAD_VARS)}={threads}; set them to override)")
    given = " ".join(f"{name}={environ[name]}" for name in THREAD_VARS if environ.get(name))
    return f"{jobs} cells at once, threads per cell from the environment ({given})"


def run_subprocess(cell: Cell, grid_yaml: Path, device: str | None, children: _Children,
                   jobs: int = 1, progress_bar: bool = True) -> dict[str, Any] | None:
    """Run ``cell`` with ``mmkit ablate --cell`` in a child process (log in ``log.txt``, where
    the progress is plain text lines), limited to its share of the cores when ``jobs`` cells
    run at once (:func:`cell_threads`); ``None`` when the grid was stopped before it started."""
    env = {**os.environ, **cell_threads(jobs)}
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    cell.dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mmkit", "ablate", "-c", str(grid_yaml), f"--cell={cell.id}",
           f"--progress_bar={str(progress_bar).lower()}"]
    with open(cell.dir / "log.txt", "a", encoding="utf-8") as log:
        child = children.start(cmd, log, env)
        if child is None:
            return None
        code = children.wait(child)
    result = cell.result() if cell.status()["state"] == "done" else None
    if code != 0 or result is None:
        status = cell.status()
        if status["state"] == "interrupted":
            raise CellInterrupted(cell, int(signal.Signals[status["signal"]]))
        if children.signum is not None and code < 0:  # stopped by the forwarded signal before it saved
            if status["state"] == "running" and status.get("pid") == child.pid:
                cell.set_status("interrupted", signal=signal.Signals(children.signum).name,
                                error=f"exit status {code}", **timing(status))
            # else it stopped before it began this attempt: the cell's state is still that of
            # the last attempt (a failed cell must start again, not resume its failed run)
            raise CellInterrupted(cell, children.signum)
        if status["state"] != "failed":  # killed before it could say so
            cell.set_status("failed", error=f"exit status {code}", log=str(cell.dir / "log.txt"))
        raise CellFailed(cell, cell.status().get("error", f"exit status {code}"))
    return result


def run_parallel(cells: list[Cell], grid_yaml: Path, jobs: int, devices: list[str] | None,
                 on_start: Callable[[Cell, str | None], None],
                 on_end: Callable[[Cell, dict[str, Any] | None, CellFailed | None], None],
                 progress_bar: bool = True) -> None:
    """Run ``cells`` in up to ``jobs`` child processes, each pinned to one of ``devices`` and
    limited to its share of the CPU threads. ``on_start`` and ``on_end`` are called from the
    worker threads. SIGINT and SIGTERM go on to the running cells (which save and mark
    themselves interrupted), no further cell starts, and :class:`CellInterrupted` is raised."""
    free: Queue[str | None] = Queue()
    for i in range(jobs):
        free.put(devices[i % len(devices)] if devices else None)
    children = _Children()

    def work(cell: Cell) -> None:
        device = free.get()
        try:
            if children.signum is not None:
                return
            on_start(cell, device)
            try:
                result = run_subprocess(cell, grid_yaml, device, children, jobs, progress_bar)
                if result is not None:
                    on_end(cell, result, None)
            except CellFailed as err:
                on_end(cell, None, err)
        finally:
            free.put(device)

    handlers = {signum: signal.signal(signum, children.forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    interrupted: CellInterrupted | None = None
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for future in [pool.submit(work, cell) for cell in cells]:
                try:
                    future.result()
                except CellInterrupted as err:
                    interrupted = interrupted or err
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    if interrupted is None and children.signum is not None:  # stopped between two cells
        interrupted = CellInterrupted(None, children.signum)
    if interrupted is not None:
        raise interrupted
