"""The ablation grid: base configs × normalizers × seeds, and where each cell lives.

A cell is one ``mmkit fit`` followed by one ``mmkit test`` of
``-c <base config> -c <normalizer overlay> --seed_everything <seed>``, with the
logger and checkpoints redirected into the cell's own directory::

    <output_dir>/<name>/
        ablation.yaml            the resolved grid (cells and SLURM tasks re-read it)
        results.csv / .md / .png
        cells/<config>-<normalizer>-s<seed>/
            status.json          pending | running | interrupted | done | failed (+ error, times)
            result.json          the cell's metrics, once done
            run/metrics.csv      the CSV log of fit and test
            checkpoints/         best and last.ckpt
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..files import resolve_config, write_json_atomic
from ..normalizers import GRID_NORMALIZERS

ALL_NORMALIZERS = list(GRID_NORMALIZERS)  # the default ``normalizers`` of a grid
CELL_STATES = ("pending", "running", "interrupted", "done", "failed")


@dataclass
class AblationSpec:
    """What to run. Every field is a key of the ablation YAML (and a ``--flag``)."""

    configs: list[str]
    normalizers: list[str] = field(default_factory=lambda: list(ALL_NORMALIZERS))
    seeds: list[int] = field(default_factory=lambda: [0])
    name: str = "ablation"
    output_dir: str = "runs/ablation"
    normalizer_dir: str = "configs/normalizer"
    args: list[str] = field(default_factory=list)
    metrics: list[str] | None = None
    test_ckpt: str = "best"
    jobs: int = 1
    devices: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.configs:
            raise ValueError("the ablation needs at least one base config in `configs`")
        # configs/... not found here names the configs shipped with mmkit
        self.configs = [resolve_config(str(c)) for c in self.configs]
        self.normalizer_dir = resolve_config(str(self.normalizer_dir))
        if not self.normalizers or not self.seeds:
            raise ValueError("`normalizers` and `seeds` must each list at least one entry")
        if self.test_ckpt not in ("best", "last"):
            raise ValueError(f"test_ckpt must be 'best' or 'last', got {self.test_ckpt!r}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if not re.fullmatch(r"[\w.-]+", self.name):
            raise ValueError(f"name {self.name!r} must be a plain directory name (letters, digits, . _ -)")
        for path in self.configs:
            if not Path(path).is_file():
                raise FileNotFoundError(f"base config {path!r} does not exist")
        cells = self.cells()  # resolves the overlays now: unknown normalizers fail before any cell runs
        if len({c.id for c in cells}) != len(cells):
            raise ValueError("two cells would share a directory: base configs and normalizers need "
                             "distinct file names, and seeds must not repeat")

    @property
    def root(self) -> Path:
        return Path(self.output_dir) / self.name

    @cached_property
    def overlays(self) -> dict[str, str]:
        """Normalizer label -> overlay YAML (a registry name is looked up in ``normalizer_dir``)."""
        found = {}
        for entry in self.normalizers:
            path = Path(entry)
            if path.suffix not in (".yaml", ".yml"):
                path = Path(self.normalizer_dir) / f"{entry}.yaml"
            if not path.is_file():
                known = sorted(p.stem for p in Path(self.normalizer_dir).glob("*.yaml"))
                raise ValueError(f"no normalizer overlay {str(path)!r} for {entry!r}; give a YAML path "
                                 f"or one of {known} (from {self.normalizer_dir})")
            found[path.stem] = str(path)
        return found

    def cells(self) -> list[Cell]:
        """Every cell, in a stable order: config, then normalizer, then seed."""
        return [Cell(self, config, label, overlay, seed)
                for config in self.configs
                for label, overlay in self.overlays.items()
                for seed in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def conflicts(self, cells: list[Cell] | None = None) -> None:
        """Raise one ``ValueError`` when an existing cell (done, or interrupted and resumable)
        was run with another definition than this grid gives it; nothing is written."""
        found = []
        for cell in self.cells() if cells is None else cells:
            if cell.status()["state"] not in ("done", "running", "interrupted"):
                continue  # pending or failed: run from scratch anyway
            change = cell.definition_change()
            if change:
                found.append(f"{cell.id} ({change})")
        if found:
            more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
            raise ValueError(f"grid {self.name} in {self.root} already holds cells run with another "
                             f"definition: {'; '.join(found[:3])}{more}; give this grid a new --name, or "
                             "delete those cell directories to run them again")


@dataclass
class Cell:
    """One run of the grid."""

    spec: AblationSpec
    config: str
    normalizer: str
    overlay: str
    seed: int

    @property
    def task(self) -> str:
        return Path(self.config).stem

    @property
    def id(self) -> str:
        return f"{self.task}-{self.normalizer}-s{self.seed}"

    @property
    def dir(self) -> Path:
        return self.spec.root / "cells" / self.id

    @property
    def ckpt_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def metrics_csv(self) -> Path:
        return self.dir / "run" / "metrics.csv"

    def cli_args(self, display: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The arguments after ``mmkit fit`` / ``mmkit test`` for this cell; ``display``
        (e.g. the progress bar) comes last and is not part of the cell's definition."""
        logger = {"class_path": "mmkit.cli.loggers.CSVLogger",
                  "init_args": {"save_dir": str(self.dir), "name": "", "version": "run"}}
        return ["-c", self.config, "-c", self.overlay, f"--seed_everything={self.seed}",
                f"--trainer.logger={json.dumps(logger)}", f"--checkpoint.dirpath={self.ckpt_dir}",
                f"--trainer.default_root_dir={self.dir}", "--trainer.enable_model_summary=false",
                *self.spec.args, *display]

    # ---- definition -----------------------------------------------------------------
    def definition(self) -> dict[str, Any]:
        """Everything that decides this cell's numbers: the base config and the overlay (file
        names and SHA-256 of their contents), the seed, the grid's ``args`` and ``test_ckpt``."""
        return {"config": {"file": Path(self.config).name, "sha256": _sha256(self.config)},
                "normalizer": {"file": Path(self.overlay).name, "sha256": _sha256(self.overlay)},
                "seed": self.seed, "args": list(self.spec.args), "test_ckpt": self.spec.test_ckpt}

    def recorded_definition(self) -> dict[str, Any] | None:
        path = self.dir / "definition.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def definition_change(self) -> str | None:
        """How the recorded definition differs from this grid's (``None``: it does not)."""
        old, new = self.recorded_definition(), self.definition()
        if old is None:
            return "no recorded definition: run by an older mmkit"
        changes = []
        for key in new:
            if old.get(key) == new[key]:
                continue
            if key == "args":
                added = [a for a in new[key] if a not in (old.get(key) or [])]
                dropped = [a for a in (old.get(key) or []) if a not in new[key]]
                changes.append("args " + ", ".join([*(f"+{a}" for a in added), *(f"-{a}" for a in dropped)]
                                                   or ["reordered"]))
            elif key in ("config", "normalizer"):
                changes.append(f"{key} file {new[key]['file']} changed")
            else:
                changes.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
        return ", ".join(changes) or None

    def record_definition(self) -> None:
        write_json_atomic(self.dir / "definition.json", self.definition())

    # ---- status -------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        path = self.dir / "status.json"
        if not path.is_file():
            return {"state": "pending"}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {"state": "failed", "error": f"unreadable {path}"}

    def set_status(self, state: str, **info: Any) -> None:
        assert state in CELL_STATES
        write_json_atomic(self.dir / "status.json", {"state": state, **info})

    def result(self) -> dict[str, Any] | None:
        path = self.dir / "result.json"
        return json.loads(path.read_text()) if path.is_file() else None


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
