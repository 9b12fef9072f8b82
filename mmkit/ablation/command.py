"""``mmkit ablate``: run a normalizer × seed × config grid and report it.

    mmkit ablate -c configs/ablation/quick.yaml
    mmkit ablate -c configs/ablation/quick.yaml --seeds [0,1,2] --jobs 2 --devices [0,1]
    mmkit ablate -c configs/ablation/quick.yaml --slurm true --dry_run true
    mmkit ablate -c configs/ablation/quick.yaml --cell quick_mnist-multimax-s0
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from rich.console import Console
from rich.markup import escape

from ..cli.callbacks import request_stop
from ..cli.formatting import duration
from ..files import resolve_config_args, write_text_atomic
from . import report, slurm
from .grid import AblationSpec, Cell
from .parallel import describe_threads, run_parallel
from .runner import CellFailed, CellInterrupted, CLIEntry, check_cells, is_running_elsewhere, run_in_process

SPEC_HELP = {
    "configs": "base mmkit configs (one per task), e.g. [configs/vit/mnist.yaml]",
    "normalizers": "registry names (overlays in normalizer_dir) or overlay YAML paths",
    "seeds": "seeds; each is --seed_everything of one cell",
    "name": "the grid's name: outputs go to <output_dir>/<name>",
    "output_dir": "where grids are written",
    "normalizer_dir": "where <name>.yaml normalizer overlays are looked up",
    "args": "extra mmkit fit/test arguments for every cell, e.g. ['--trainer.max_epochs=3']",
    "metrics": "metrics of the table (default: every test/* metric logged)",
    "test_ckpt": "test the monitored 'best' checkpoint or the 'last' one",
    "jobs": "cells run at once (each in its own process when > 1)",
    "devices": "CUDA devices handed to parallel cells in turn, e.g. ['0', '1']",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="mmkit ablate", description=__doc__.split("\n")[0],
                            exit_on_error=False, allow_abbrev=False)  # no --job for --jobs
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="an ablation YAML")
    hints = get_type_hints(AblationSpec)
    for f in fields(AblationSpec):
        kwargs: dict[str, Any] = {"type": hints[f.name], "help": SPEC_HELP[f.name]}
        if f.default is not MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not MISSING:
            kwargs["default"] = f.default_factory()
        else:
            kwargs["required"] = True
        parser.add_argument(f"--{f.name}", **kwargs)
    parser.add_argument("--cell", type=str | None, default=None,
                        help="run only this cell (its id or index) and write no report")
    parser.add_argument("--slurm", type=bool, default=False, help="submit the cells as a SLURM job array")
    parser.add_argument("--dry_run", type=bool, default=False, help="with --slurm: print, do not submit")
    parser.add_argument("--sbatch", type=list[str], default=[],
                        help="extra #SBATCH options, e.g. ['--gres=gpu:1', '--time=04:00:00']")
    parser.add_argument("--progress_bar", type=bool, default=True, help="Lightning's progress bar per cell")
    return parser


def parse(argv: list[str]) -> tuple[AblationSpec, Any]:
    cfg = build_parser().parse_args(resolve_config_args(argv))
    spec = AblationSpec(**{f.name: cfg[f.name] for f in fields(AblationSpec)})
    return spec, cfg


def display_args(cfg: Any) -> list[str]:
    """Cell arguments that change only what is shown, not the cell's definition."""
    return [] if cfg.progress_bar else ["--trainer.enable_progress_bar=false"]


def save_grid(spec: AblationSpec) -> Path:
    path = spec.root / "ablation.yaml"
    write_text_atomic(path, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return path


def find_cell(cells: list[Cell], key: str) -> Cell:
    if key.isdigit() and int(key) < len(cells):
        return cells[int(key)]
    for cell in cells:
        if cell.id == key:
            return cell
    raise ValueError(f"no cell {key!r}: give an index 0..{len(cells) - 1} or one of "
                     f"{[c.id for c in cells]}")


def main(argv: list[str], cli: CLIEntry) -> int:
    """``mmkit ablate <argv>``, running every cell through ``cli``; returns the exit status."""
    spec, cfg = parse(argv)
    console = Console(highlight=False, soft_wrap=True)
    cells = spec.cells()
    if cfg.cell is not None:  # one cell, in this process (SLURM array tasks, parallel workers)
        cell = find_cell(cells, cfg.cell)
        spec.conflicts([cell])
        if cell.status()["state"] == "done":
            console.print(f"{cell.id}: already done")
            return 0
        try:
            run_in_process(cell, cli, display_args(cfg))
        except CellFailed as err:
            console.print(f"[red]{err}[/red]")
            return 1
        except CellInterrupted as err:
            console.print(str(err))
            return err.code
        return 0
    spec.conflicts(cells)  # before anything is written: the grid's YAML must describe its table
    todo = [c for c in cells if c.status()["state"] != "done" and not is_running_elsewhere(c)]
    check_cells(todo, cli)  # every cell's arguments parse, in --dry_run too
    grid_yaml = save_grid(spec)
    busy = [c for c in cells if is_running_elsewhere(c)]
    console.print(f"ablation [bold]{spec.name}[/bold]: {len(cells)} cells "
                  f"({len(cells) - len(todo) - len(busy)} done, {len(busy)} running elsewhere, "
                  f"{len(todo)} to run) -> {spec.root}")
    if cfg.slurm:
        out = slurm.submit(spec, grid_yaml, [cells.index(c) for c in todo], cfg.sbatch, cfg.dry_run)
        console.print(("would run: " if cfg.dry_run else "submitted: ") + out)
        console.print(f"when the array is done, rerun `mmkit ablate -c {grid_yaml}` for the table and plot")
        return 0
    try:
        failed = run_cells(spec, todo, grid_yaml, console, cli, display_args(cfg), cfg.progress_bar)
    except CellInterrupted as err:  # the grid stops at the signal; finished cells keep their results
        console.print(str(err))
        return err.code
    rows = [r for c in cells if c.status()["state"] == "done" and (r := c.result())]
    paths = report.write_reports(spec, rows)
    if rows:
        console.print()
        console.print(paths["table"].read_text(), markup=False)
    for label, key in (("results:", "csv"), ("table:  ", "table"), ("plot:   ", "plot")):
        if key in paths:
            console.print(f"{label} {paths[key]}")
    for cell in failed:
        status = cell.status()
        where = status.get("log", cell.dir)
        console.print(f"[red]failed[/red] {cell.id}: {status.get('error')} (see {where}); "
                      "rerun the same command to retry it")
    return 1 if failed else 0


def run_cells(spec: AblationSpec, todo: list[Cell], grid_yaml: Path, console: Console,
              cli: CLIEntry, display: list[str], progress_bar: bool = True) -> list[Cell]:
    """Run ``todo``; returns the cells that failed. A signal (Ctrl-C, SIGTERM) stops the grid with
    :class:`CellInterrupted`: the cell keeps its checkpoints and the rerun resumes it.

    Each cell is announced as ``[k/n] <cell id>`` when it starts and again when it ends, with
    the grid's ETA (the mean time of the cells finished so far in this run, times the cells
    left, over the cells run at once). With ``jobs`` > 1 the hooks run in worker threads."""
    failed: list[Cell] = []
    lock = threading.Lock()
    numbers: dict[str, int] = {}
    started: dict[str, float] = {}
    walls: list[float] = []

    def on_start(cell: Cell, device: str | None) -> None:
        with lock:
            numbers[cell.id] = k = len(numbers) + 1
            started[cell.id] = time.monotonic()
            where = f" on device {device}" if device is not None else ""
            console.rule(escape(f"[{k}/{len(todo)}] {cell.id}{where} ({len(todo) - k} left after this)"))

    def on_end(cell: Cell, result: dict[str, Any] | None, err: CellFailed | None) -> None:
        with lock:
            walls.append(time.monotonic() - started.pop(cell.id, time.monotonic()))
            tag = f"[{numbers.get(cell.id, '?')}/{len(todo)}]"
            eta = grid_eta(walls, len(todo) - len(walls), spec.jobs)
            if err is not None:
                failed.append(cell)
                console.print(f"{escape(tag)} [red]{cell.id} failed[/red]: {escape(str(err))}{eta}")
                return
            shown = ", ".join(f"{k}={v:.4g}" for k, v in result.items() if k.startswith("test/"))
            wall = result["wall_s"]
            took = f"{wall:.0f} s" if math.isfinite(wall) else "an unknown time (an earlier attempt's is)"
            console.print(escape(f"{tag} {cell.id} done in {took}: {shown}{eta}"))

    if spec.jobs > 1:
        console.print(describe_threads(spec.jobs))
        run_parallel(todo, grid_yaml, spec.jobs, spec.devices, on_start, on_end, progress_bar)
        return failed
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # Lightning turns Ctrl-C into SystemExit; remember it was a signal
        request_stop(signum)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)  # while a cell trains, mmkit fit stops it gracefully instead
    try:
        for cell in todo:
            on_start(cell, None)
            try:
                on_end(cell, run_in_process(cell, cli, display), None)
            except CellFailed as err:
                on_end(cell, None, err)
    finally:
        signal.signal(signal.SIGINT, previous)
    return failed


def grid_eta(walls: list[float], left: int, jobs: int) -> str:
    """``; grid ETA ...`` for ``left`` cells still to finish, from the wall times of the cells
    finished in this run (``walls``) and the cells run at once; empty when nothing is left."""
    if left <= 0 or not walls:
        return ""
    mean = sum(walls) / len(walls)
    return f"; grid ETA {duration(mean * left / min(max(1, jobs), left))} ({left} left)"
