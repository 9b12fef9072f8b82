"""Running cells: in this process (one at a time) or as subprocesses (several at once).

Every cell goes through :class:`mmkit.cli.MMKitCLI`, exactly as ``mmkit fit`` and
``mmkit test`` do. Its state is kept in ``status.json`` and its metrics in
``result.json`` (both written atomically), so a rerun skips finished cells and
retries failed or interrupted ones, and one failing cell never costs another's
results. An interrupted cell resumes from its ``last.ckpt`` when there is one; a
failed one starts again from scratch (its old directory is removed).
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import Any

import torch

from .grid import Cell, write_json_atomic


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_running_elsewhere(cell: Cell) -> bool:
    """True when another live process on this host is running ``cell`` right now."""
    status = cell.status()
    return (status["state"] == "running" and status.get("host") == socket.gethostname()
            and status.get("pid") not in (None, os.getpid()) and _pid_alive(status["pid"]))


def prepare(cell: Cell) -> str:
    """Get ``cell`` ready to (re)run; returns how: ``fresh``, ``resume`` or ``retry``."""
    state = cell.status()["state"]
    if state == "failed":
        shutil.rmtree(cell.dir, ignore_errors=True)
        return "retry"
    if state == "running" and (cell.ckpt_dir / "last.ckpt").is_file():
        return "resume"
    if state == "running":
        return "retry"
    return "fresh"


def test_checkpoint(cell: Cell) -> Path:
    """The checkpoint to test: the monitored best (recorded in ``last.ckpt``) or last."""
    last = cell.ckpt_dir / "last.ckpt"
    if not last.is_file():
        raise FileNotFoundError(f"fit of {cell.id} left no {last}")
    if cell.spec.test_ckpt == "last":
        return last
    state = torch.load(last, map_location="cpu", weights_only=False, mmap=True)
    for key, value in state.get("callbacks", {}).items():
        best = value.get("best_model_path") if "ModelCheckpoint" in str(key) else None
        if best and Path(best).is_file():
            return Path(best)
    return last


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


def run_in_process(cell: Cell) -> dict[str, Any]:
    """``mmkit fit`` then ``mmkit test`` for ``cell`` in this process; returns its result."""
    from ..cli import MMKitCLI  # the CLI sits above the ablation runner

    how = prepare(cell)
    cell.set_status("running", pid=os.getpid(), host=socket.gethostname(), how=how,
                    started=time.strftime("%Y-%m-%d %H:%M:%S"))
    start = time.perf_counter()
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI gets its args from us, not from `mmkit ablate`
    try:
        resume = cell.ckpt_dir / "last.ckpt"
        MMKitCLI(args=["fit", *cell.cli_args(), *([f"--ckpt_path={resume}"] if how == "resume" else [])])
        ckpt = test_checkpoint(cell)
        MMKitCLI(args=["test", *cell.cli_args(), f"--ckpt_path={ckpt}"])
    except (Exception, SystemExit) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        (cell.dir / "error.txt").write_text(traceback.format_exc())
        cell.set_status("failed", error=f"{type(err).__name__}: {message}",
                        log=str(cell.dir / "error.txt"))
        raise CellFailed(cell, message) from err
    finally:
        sys.argv = argv
    return finish(cell, time.perf_counter() - start, ckpt)


def finish(cell: Cell, wall_s: float, ckpt: Path) -> dict[str, Any]:
    last, _ = read_metrics(cell.metrics_csv)
    metrics = {k: v for k, v in last.items() if k.startswith(("test/", "val/"))}
    if not any(k.startswith("test/") for k in metrics):
        cell.set_status("failed", error=f"no test metrics in {cell.metrics_csv}")
        raise CellFailed(cell, f"no test metrics in {cell.metrics_csv}")
    result = {"id": cell.id, "config": cell.config, "normalizer": cell.normalizer, "seed": cell.seed,
              **metrics, "wall_s": round(wall_s, 1), "ckpt": str(ckpt)}
    write_json_atomic(cell.dir / "result.json", result)
    cell.set_status("done", wall_s=round(wall_s, 1), pid=os.getpid(), host=socket.gethostname())
    return result


class CellFailed(RuntimeError):
    def __init__(self, cell: Cell, message: str) -> None:
        super().__init__(f"{cell.id}: {message}")
        self.cell = cell


def run_subprocess(cell: Cell, grid_yaml: Path, device: str | None) -> dict[str, Any]:
    """Run ``cell`` with ``mmkit ablate --cell`` in a child process (log in ``log.txt``)."""
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    cell.dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mmkit.cli", "ablate", "-c", str(grid_yaml), f"--cell={cell.id}",
           "--progress_bar=false"]
    with open(cell.dir / "log.txt", "a", encoding="utf-8") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    result = cell.result() if cell.status()["state"] == "done" else None
    if code != 0 or result is None:
        status = cell.status()
        if status["state"] != "failed":  # killed before it could say so
            cell.set_status("failed", error=f"exit status {code}", log=str(cell.dir / "log.txt"))
        raise CellFailed(cell, cell.status().get("error", f"exit status {code}"))
    return result


def run_parallel(cells: list[Cell], grid_yaml: Path, jobs: int, devices: list[str] | None,
                 on_start, on_end) -> None:
    """Run ``cells`` in up to ``jobs`` child processes, each pinned to one of ``devices``."""
    free: Queue[str | None] = Queue()
    for i in range(jobs):
        free.put(devices[i % len(devices)] if devices else None)

    def work(cell: Cell) -> None:
        device = free.get()
        try:
            on_start(cell, device)
            try:
                on_end(cell, run_subprocess(cell, grid_yaml, device), None)
            except CellFailed as err:
                on_end(cell, None, err)
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(work, cell) for cell in cells]:
            future.result()
