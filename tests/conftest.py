import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a temporary directory (CLI runs write runs/ and data/ relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def quiet_trainer_args(save_dir) -> list[str]:
    """CLI flags every in-process CLI test uses: log each step, no bars or summaries,
    and metrics under ``save_dir``."""
    return ["--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={save_dir}"]
