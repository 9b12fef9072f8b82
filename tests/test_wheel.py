"""The wheel, installed into a fresh virtual environment outside the checkout, runs the
README's commands from an empty directory: the shipped configs, the embedded data, `fit`,
`test`, `ablate`, `figures` and `demo`.

The environment gets mmkit from the wheel only; its dependencies (torch and the rest, 3 GB)
come from the test's own environment through a ``.pth`` line, so nothing large is
downloaded. The ``lightning`` case installs the lowest Lightning that pyproject.toml allows
into the fresh environment, ahead of the test environment's own (the highest allowed), so
both ends of the declared range run the same commands.

Slow (about two minutes for both cases on 2 cores); ``make test`` runs it after the default
set.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
ANYWHERE = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache")
AT_THE_ROOT = {".git", ".venv", "runs", "build", "dist", "data", "figures"}  # a checkout's own outputs


def not_shipped(folder: str, names: list[str]) -> set[str]:
    skip = set(ANYWHERE(folder, names))
    return skip | (AT_THE_ROOT & set(names) if Path(folder) == ROOT else set())
TINY = ["--model.network.init_args.preset=test", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1", "--data.init_args.batch_size=8",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

pytestmark = pytest.mark.slow


def lightning_bounds() -> tuple[str, str]:
    """The ``lightning>=LOW,<HIGH`` range that pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spec = next(d for d in project["dependencies"] if re.match(r"lightning\b", d))
    found = re.fullmatch(r"lightning>=([\d.]+),<([\d.]+)", spec.replace(" ", ""))
    assert found, f"lightning needs a lower and an upper bound in pyproject.toml, got {spec!r}"
    return found.group(1), found.group(2)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=not_shipped)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(work / "dist"), str(source)], check=True)
    (built,) = (work / "dist").glob("mmkit-*.whl")
    return built


def test_the_wheel_ships_every_config_and_the_embedded_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = ROOT / "mmkit" / "configs"
    configs = {f"mmkit/configs/{p.relative_to(shipped)}" for p in shipped.rglob("*") if p.is_file()}
    assert configs and configs <= names, sorted(configs - names)
    assert {"mmkit/data/embedded/mnist5k.u8.xz", "mmkit/data/embedded/kjv.txt.xz"} <= names
    assert not any(n.startswith(("tests/", "tools/")) for n in names)
    assert wheel.stat().st_size < 4_000_000  # 1.8 MB: the embedded data is 1.6 MB of it


def make_env(wheel: Path, where: Path, lightning: str | None) -> Path:
    """A fresh virtual environment with mmkit from ``wheel`` (and ``lightning==<version>``)."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p, "torch").is_dir()]
    assert deps, "the test environment has no torch to lend"
    Path(purelib, "test_dependencies.pth").write_text("\n".join(deps) + "\n")
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
           "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True)
    if lightning is not None:
        subprocess.run([*pip, f"lightning=={lightning}"], check=True)
    return where / "bin"


@pytest.mark.parametrize("lightning", ["highest", "lowest"])
def test_the_installed_wheel_runs_the_readme_commands_from_an_empty_directory(wheel, tmp_path, lightning):
    low, _ = lightning_bounds()
    bin_dir = make_env(wheel, tmp_path / "env", low if lightning == "lowest" else None)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}

    def mmkit(*args: str) -> str:
        done = subprocess.run([str(bin_dir / "mmkit"), *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"mmkit {' '.join(args)}:\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    where = subprocess.run([str(bin_dir / "python"), "-c", "import lightning, mmkit; print(mmkit.__file__); "
                            "print(lightning.__version__)"], cwd=empty, env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert Path(where[0]).is_relative_to(tmp_path / "env")  # mmkit from the wheel, not the checkout
    if lightning == "lowest":
        assert where[1] == low
    assert mmkit("--version").strip().startswith("mmkit ")
    assert "| sparsemax |" in mmkit("demo")
    mmkit("fit", "-c", "configs/vit/mnist.yaml", "-c", "configs/normalizer/multimax.yaml", *TINY)  # README
    assert (empty / "runs" / "vit_mnist" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    multimax = ["-c", "configs/vit/mnist.yaml", "-c", "configs/normalizer/multimax.yaml", *TINY]
    assert "test/acc1" in mmkit("test", *multimax, "--ckpt_path=last")
    (empty / "grid.yaml").write_text(textwrap.dedent(f"""\
        name: tiny
        configs: [configs/vit/mnist.yaml]
        normalizers: [softmax, entmax15]
        seeds: [0]
        args: {TINY}
        """))
    mmkit("ablate", "-c", "grid.yaml", "--progress_bar", "false")
    assert (empty / "runs" / "ablation" / "tiny" / "results.csv").is_file()
    mmkit("figures", "simplex", "--num", "20", "--out", "simplex.png")
    assert (empty / "simplex.png").stat().st_size > 1000
