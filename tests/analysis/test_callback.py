"""``AttentionStatistics`` in tiny ViT fits: finite per-layer statistics for every normalizer,
equal to a row-by-row reference on the same batch, and the learned σ parameters.
(The LM and MT tasks, the hooks themselves and the overlay: test_callback_tasks.py.)"""

from pathlib import Path

import pytest

from mmkit.analysis.callback import AttentionStatistics
from mmkit.cli import MMKitCLI
from mmkit.normalizers import NORMALIZERS

from ..conftest import quiet_trainer_args
from .logged import OVERLAY, ROOT, assert_sigma, assert_stats, assert_vit_stats_match, last_row

pytestmark = pytest.mark.usefixtures("in_tmp")


def vit_args(tmp_path: Path, normalizer: str) -> list[str]:
    return ["fit", "-c", str(ROOT / "configs/vit/mnist.yaml"), "-c", OVERLAY,
            "--model.network.init_args.preset=test", f"--model.network.init_args.normalizer={normalizer}",
            f"--model.network.init_args.output_normalizer={normalizer}", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=2",
            "--data.init_args.batch_size=8", *quiet_trainer_args(tmp_path)]


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_vit_logs_finite_statistics_equal_to_the_reference(name, tmp_path):
    cli = MMKitCLI(args=vit_args(tmp_path, name))
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, AttentionStatistics)]
    assert len(callbacks) == 1 and callbacks[0].num_batches == 1
    logged = last_row(Path(cli.trainer.log_dir))
    network = cli.model.network.eval()
    assert_stats(logged, [f"blocks.{i}.attn" for i in range(len(network.blocks))])
    assert not any(k.startswith("attn/output_normalizer") for k in logged)
    # The same numbers from the final weights on the first validation batch only.
    images, _ = next(iter(cli.datamodule.val_dataloader()))
    assert_vit_stats_match(logged, network, images)
    if name == "multimax":
        assert_sigma(logged, network)
        assert any(k.startswith("sigma/output_normalizer/") for k in logged)
    else:
        assert not any(k.startswith("sigma/") for k in logged)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_batches"):
        AttentionStatistics(num_batches=-1)
    with pytest.raises(ValueError, match="small"):
        AttentionStatistics(small=0.0)
