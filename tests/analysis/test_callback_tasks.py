"""``AttentionStatistics`` hooks on an encoder-decoder with padding, per-head σ, learnable
parameters, the LM and MT tasks in tiny fits, and the config overlay."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule

from mmkit.analysis.callback import AttentionStatistics, normalizer_parameters
from mmkit.analysis.stats import layer_name
from mmkit.cli import MMKitCLI
from mmkit.models import Seq2SeqTransformer
from mmkit.nn.attention import capture_attention
from mmkit.normalizers import Entmax, MultiMax, SoftMax

from ..conftest import quiet_trainer_args
from .logged import OVERLAY, ROOT, STATS, assert_sigma, assert_stats, assert_vit_stats_match, last_row
from .reference import reference_stats


class Holder(LightningModule):
    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network


def run_validation(callback, module, batches, sanity=False) -> dict[str, float]:
    """Call the callback's hooks around ``batches`` (callables) as Lightning would."""
    trainer = SimpleNamespace(sanity_checking=sanity, world_size=1)
    logged: dict[str, float] = {}
    module.log_dict = lambda metrics, **kwargs: logged.update(metrics)
    callback.on_validation_epoch_start(trainer, module)
    for i, batch in enumerate(batches):
        callback.on_validation_batch_start(trainer, module, None, i)
        batch()
        callback.on_validation_batch_end(trainer, module, None, None, i)
    callback.on_validation_epoch_end(trainer, module)
    return logged


def test_hooks_capture_only_the_first_batches_and_skip_padding():
    net = Seq2SeqTransformer(40, "test", normalizer="multimax", per_head=True).eval()
    src = torch.randint(3, 40, (3, 7))
    src[0, 4:] = net.pad_id  # padded keys take no part
    tgt = torch.randint(3, 40, (3, 5))
    module = Holder(net)
    calls: dict[int, list] = {}
    with torch.no_grad(), capture_attention(lambda n, s, p, k: calls.setdefault(id(n), []).append((s, p, k))):
        net(src, tgt)
    callback = AttentionStatistics(num_batches=1, per_head=True)
    with torch.no_grad():
        logged = run_validation(callback, module, [lambda: net(src, tgt), lambda: net(tgt, src)])
    layers = {layer_name(f"network.{n}"): m for n, m in net.named_modules() if n.endswith("attn.normalizer")}
    assert len(layers) == 3 * len(net.decoder) and any("cross_attn" in n for n in layers)
    assert_stats(logged, list(layers))
    for layer, norm in layers.items():
        expected = reference_stats(calls[id(norm)])
        for stat in STATS:
            assert logged[f"attn/{layer}/{stat}"] == pytest.approx(expected[stat], rel=1e-4, abs=1e-5)
    assert_sigma(logged, net)
    norm = net.encoder[0].attn.normalizer
    assert logged["sigma/encoder.0.attn/h1/td2"] == pytest.approx(float(norm.ts[1, 3]))
    # Sanity-check epochs log nothing; 0 batches logs parameters only.
    assert run_validation(callback, module, [lambda: net(src, tgt)], sanity=True) == {}
    only_params = run_validation(AttentionStatistics(num_batches=0), module, [lambda: net(src, tgt)])
    assert only_params and all(k.startswith("sigma/") for k in only_params)


def test_learnable_parameters_are_logged():
    assert normalizer_parameters("x", SoftMax(temperature=2.0, learnable=True)) == {
        "param/x/temperature": pytest.approx(2.0)}
    entmax = Entmax(alpha=1.3, learnable=True)
    assert normalizer_parameters("x", entmax) == {"param/x/alpha": pytest.approx(1.3)}
    assert normalizer_parameters("x", SoftMax()) == {}
    mm = MultiMax(order=1)
    assert set(normalizer_parameters("o", mm)) == {"sigma/o/b1", "sigma/o/d1", "sigma/o/tb1", "sigma/o/td1"}


@pytest.mark.usefixtures("in_tmp")
def test_language_model_logs_every_layer(tmp_path):
    args = ["fit", "-c", str(ROOT / "configs/lm/kjv.yaml"),
            "-c", str(ROOT / "configs/normalizer/multimax.yaml"), "-c", OVERLAY,
            "--model.network.init_args.preset=test", "--model.network.init_args.vocab_size=300",
            "--data.init_args.corpus=pydoc", "--data.init_args.vocab_size=300",
            "--data.init_args.max_chars=20000", "--data.init_args.batch_size=4",
            "--data.init_args.eval_batch_size=2", "--data.init_args.tgt_len=16", "--trainer.max_steps=1",
            "--trainer.val_check_interval=1", "--trainer.limit_val_batches=2",
            "--trainer.num_sanity_val_steps=0", *quiet_trainer_args(tmp_path)]
    cli = MMKitCLI(args=args)
    logged = last_row(Path(cli.trainer.log_dir))
    net = cli.model.network
    layers = [layer_name(f"network.{n}") for n, m in net.named_modules()
              if m is not net.output_normalizer and isinstance(m, MultiMax)]
    assert len(layers) == len(net.attn)
    assert_stats(logged, layers)
    assert_sigma(logged, net)


@pytest.mark.slow
@pytest.mark.usefixtures("in_tmp")
def test_translation_logs_encoder_decoder_and_cross_attention(tmp_path):
    args = ["fit", "-c", str(ROOT / "configs/mt/numbers_en_de.yaml"), "-c", OVERLAY,
            "--model.network.init_args.normalizer=sparsemax", "--model.network.init_args.preset=test",
            "--model.network.init_args.vocab_size=300", "--data.init_args.vocab_size=300",
            "--data.init_args.num_train=100", "--data.init_args.num_valid=4", "--data.init_args.num_test=4",
            "--data.init_args.max_tokens=256", "--data.init_args.eval_batch_size=4",
            "--data.init_args.max_number=100", "--model.init_args.beam=1", "--model.init_args.max_len_b=2",
            "--model.init_args.max_len_a=0.5", "--trainer.max_steps=1", "--trainer.val_check_interval=1",
            "--trainer.num_sanity_val_steps=0", *quiet_trainer_args(tmp_path)]
    cli = MMKitCLI(args=args)
    net = cli.model.network
    layers = [layer_name(f"network.{n}") for n, _ in net.named_modules() if n.endswith("attn.normalizer")]
    assert any("cross_attn" in n for n in layers) and any("encoder" in n for n in layers)
    assert_stats(last_row(Path(cli.trainer.log_dir)), layers)


def test_overlay_appends_to_callbacks_of_earlier_files(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  callbacks:\n"
                    "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n")
    for files in ([base], []):
        args = [a for f in [ROOT / "configs/vit/mnist.yaml", *files, OVERLAY] for a in ("-c", str(f))]
        names = [type(c).__name__ for c in MMKitCLI(args=args, run=False).trainer.callbacks]
        assert names.count("AttentionStatistics") == 1
        assert ("LearningRateMonitor" in names) == bool(files)


@pytest.mark.slow
@pytest.mark.usefixtures("in_tmp")
def test_ddp_totals_are_summed_over_ranks(tmp_path):
    """Two CPU ranks (gloo): the logged numbers are those of both ranks' first validation
    batches together, i.e. of the first 2 x 8 validation images."""
    args = ["fit", "-c", str(ROOT / "configs/vit/mnist.yaml"), "-c", OVERLAY,
            "--model.network.init_args.preset=test", "--model.network.init_args.normalizer=multimax",
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=2",
            "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn",
            "--data.init_args.batch_size=8", *quiet_trainer_args(tmp_path)]
    cli = MMKitCLI(args=args)
    (metrics,) = tmp_path.glob("vit_mnist/version_*/metrics.csv")  # written by rank 0
    logged = last_row(metrics.parent)
    network = cli.model.network.eval()  # the spawned ranks' trained weights
    cli.datamodule.setup("validate")
    images = torch.stack([cli.datamodule.val_set[i][0] for i in range(16)])
    assert_vit_stats_match(logged, network, images)
