import os

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


@pytest.fixture(autouse=True)
def _fresh_rendezvous(monkeypatch):
    """Each test's DDP run gets its own free port on the loopback interface. Lightning writes
    the port of the first ``ddp_spawn`` into ``os.environ["MASTER_PORT"]``, so without this
    every later DDP run in the session (and every subprocess a test starts) would rendezvous
    on that one port again, racing the previous group's sockets."""
    names = ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    yield
    for name in names:
        os.environ.pop(name, None)
    os.environ.update(saved)


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
