"""Where the figures commands find a run's config.yaml and tokenizer.json: beside the
checkpoints' folder (``mmkit fit``), or in ``run/`` below it (an ``mmkit ablate`` cell logs
into ``<cell>/run/``); never in another folder."""

from pathlib import Path

import pytest

from mmkit.analysis.checkpoints import run_config, run_file


def make(root: Path, *files: str) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("data: {init_args: {where: %s}}\n" % name.replace("/", "_"))
    return root / "checkpoints" / "last.ckpt"


def test_a_fit_run_keeps_its_files_beside_the_checkpoints(tmp_path):
    ckpt = make(tmp_path, "config.yaml", "run/config.yaml")
    assert run_file(ckpt, "config.yaml") == tmp_path / "config.yaml"  # the direct one wins
    assert run_config(ckpt)["data"]["init_args"]["where"] == "config.yaml"


def test_a_grid_cell_keeps_them_one_folder_below(tmp_path):
    ckpt = make(tmp_path, "run/config.yaml", "run/tokenizer.json")
    assert run_file(ckpt, "config.yaml") == tmp_path / "run" / "config.yaml"
    assert run_file(ckpt, "tokenizer.json") == tmp_path / "run" / "tokenizer.json"


def test_no_other_folder_is_searched(tmp_path):
    ckpt = make(tmp_path, "other/config.yaml", "runs/tokenizer.json")  # not this run's files
    assert run_file(ckpt, "config.yaml") == tmp_path / "config.yaml"
    assert run_file(ckpt, "tokenizer.json") == tmp_path / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="run config .*config.yaml not found"):
        run_config(ckpt)
