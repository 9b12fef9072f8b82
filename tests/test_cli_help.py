"""What a user finds without reading the docs: `mmkit --help`, `--version`, short task help
that lists mmkit's networks, the normalizer option's help, `--ckpt_path`'s meaning, the
configs shipped with the package, and no advertising in the output."""

import logging

import pytest
import torch
from torch import nn

from mmkit import __version__
from mmkit.cli import MMKitCLI
from mmkit.cli.helptext import COMMANDS
from mmkit.cli.quiet import quiet_lightning
from mmkit.entry import main
from mmkit.files import SHIPPED_CONFIGS, resolve_config, resolve_config_args
from mmkit.models import ImageClassifierNetwork
from mmkit.nn.attention import as_normalizer, attend
from mmkit.normalizers import NORMALIZERS, Entmax15

from .test_cli import MNIST, fast

pytestmark = pytest.mark.usefixtures("in_tmp")


def run(args, capsys):
    """``mmkit <args>``: (exit status, stdout, stderr); help exits through SystemExit."""
    try:
        code = main(args)
    except SystemExit as done:
        code = done.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_main_help_lists_every_command_and_version(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and out.startswith("usage: mmkit <command>")
    for name in COMMANDS:
        assert f"\n  {name} " in out
    assert set(COMMANDS) == {"fit", "validate", "test", "predict", "ablate", "figures", "export", "demo"}
    assert run(["--version"], capsys)[:2] == (0, f"mmkit {__version__}\n")
    code, out, err = run([], capsys)
    assert code == 2 and out == "" and err.startswith("usage: mmkit")


def test_demo_help_is_help_and_unknown_commands_are_one_line(capsys):
    code, out, _ = run(["demo", "--help"], capsys)
    assert code == 0 and out.startswith("usage: mmkit demo") and "| normalizer |" not in out
    code, _, err = run(["fitt", "-c", MNIST], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown command 'fitt'" in err and "ablate" in err


def test_task_help_is_short_and_lists_mmkits_networks(capsys):
    code, out, _ = run(["fit", "--model.help", "ImageClassification"], capsys)
    assert code == 0 and len(out.splitlines()) < 150
    assert "known subclasses: mmkit.models.VisionTransformer" in " ".join(out.split())
    assert "torch.nn.Linear" not in out and "TransformerXL" not in out


def test_network_help_resolves_mmkits_vit_and_names_every_normalizer(capsys):
    code, out, _ = run(["fit", "--model", "ImageClassification", "--model.network.help", "VisionTransformer"],
                       capsys)
    assert code == 0 and "Help for --network.help=mmkit.models.VisionTransformer" in out
    text = " ".join(out.split())
    for name in NORMALIZERS:
        assert name in text, name
    assert "--model.network.normalizer.help NAME" in text


def test_normalizer_help_from_the_registry(capsys):
    code, out, _ = run(["fit", "--model.network.normalizer.help", "multimax"], capsys)
    assert code == 0 and out.startswith("multimax: mmkit.normalizers.MultiMax")
    assert "  order: int (default: 2)" in out and "{name: multimax, order: 2}" in out
    code, out, _ = run(["fit", "--model.network.output_normalizer.help=entmax15"], capsys)
    assert code == 0 and out.startswith("entmax15: mmkit.normalizers.Entmax15")
    code, out, _ = run(["fit", "--model.network.normalizer.help"], capsys)
    assert code == 0 and all(f"  {name} " in out for name in NORMALIZERS)
    code, _, err = run(["fit", "--model.network.normalizer.help", "nope"], capsys)
    assert code == 2 and "unknown normalizer 'nope'" in err


def test_ckpt_path_help_says_what_last_means(capsys):
    _, out, _ = run(["fit", "--help"], capsys)
    assert out.startswith("usage: mmkit [options] fit")
    assert "the newest run of this config" in " ".join(out.split())
    _, out, _ = run(["test", "--help"], capsys)
    assert "the checkpoint to evaluate" in " ".join(out.split())


def test_a_network_of_ones_own_subclasses_the_tasks_base(tmp_path, capsys):
    spec = '{"class_path": "torch.nn.Linear", "init_args": {"in_features": 4, "out_features": 2}}'
    code, _, err = run(["fit", "-c", MNIST, f"--model.network={spec}", *fast(tmp_path)], capsys)
    assert code == 2 and "ImageClassifierNetwork" in err and err.count("\n") == 1
    assert issubclass(Tiny, ImageClassifierNetwork)
    own = [a for a in fast(tmp_path) if "network" not in a]
    cli = MMKitCLI(args=["-c", MNIST, "--model.network=tests.test_cli_help.Tiny", *own], run=False)
    assert type(cli.model.network) is Tiny


class Tiny(ImageClassifierNetwork):
    """A user's own classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.head = nn.Linear(28 * 28, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.flatten(1))


def test_configs_resolve_against_the_package_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty directory: no configs/ here
    assert resolve_config("configs/vit/mnist.yaml") == str(SHIPPED_CONFIGS / "vit" / "mnist.yaml")
    assert resolve_config("configs/normalizer") == str(SHIPPED_CONFIGS / "normalizer")
    assert resolve_config("configs/nope.yaml") == "configs/nope.yaml"  # the user's error names their path
    (tmp_path / "configs" / "vit").mkdir(parents=True)
    (tmp_path / "configs" / "vit" / "mnist.yaml").write_text("seed_everything: 1\n")
    assert resolve_config("configs/vit/mnist.yaml") == "configs/vit/mnist.yaml"  # a local file wins
    args = ["fit", "-c", "configs/lm/kjv.yaml", "--config=configs/mt/numbers_en_de.yaml"]
    assert resolve_config_args(args) == [
        "fit", "-c", str(SHIPPED_CONFIGS / "lm" / "kjv.yaml"),
        "--config=" + str(SHIPPED_CONFIGS / "mt" / "numbers_en_de.yaml")]


def test_lightning_advertising_is_silenced_and_other_info_kept(caplog):
    from lightning.pytorch.utilities import rank_zero_info

    quiet_lightning()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False")
    messages = [r.getMessage() for r in caplog.records]
    assert "GPU available: False" in messages and not any("💡" in m for m in messages)


def test_attend_takes_a_spec_of_a_normalizer_without_parameters():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    assert torch.equal(attend(q, k, v, "entmax15"), attend(q, k, v, Entmax15()))
    assert as_normalizer({"name": "entmax", "alpha": 1.3}) is as_normalizer({"alpha": 1.3, "name": "entmax"})
    with pytest.raises(ValueError, match="learnable parameters"):
        attend(q, k, v, "multimax")
    with pytest.raises(ValueError, match="Normalizer module or a spec"):
        attend(q, k, v, torch.softmax)
