"""Run provenance: a checkpoint records what it is, and no command evaluates, resumes or
overwrites the record of a run other than the one the config describes."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch

from mmkit.analysis.checkpoints import load_network, recorded_network
from mmkit.cli import MMKitCLI
from mmkit.entry import main
from mmkit.tasks import ImageClassification

from .conftest import quiet_trainer_args

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs/vit/mnist.yaml")
OVERLAY = ROOT / "configs/normalizer"
TB = ('--trainer.logger+={"class_path": "lightning.pytorch.loggers.TensorBoardLogger", '
      '"init_args": {"save_dir": "%s", "name": "vit_mix"}}')

pytestmark = pytest.mark.usefixtures("in_tmp")


def args(tmp: Path, *extra: str, normalizer: str | None = None, steps: int = 3) -> list[str]:
    overlay = ["-c", str(OVERLAY / f"{normalizer}.yaml")] if normalizer else []
    return ["-c", MNIST, *overlay, "--model.network.init_args.preset=test",
            "--trainer.logger.init_args.name=vit_mix", f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
            f"--trainer.val_check_interval={steps}", "--data.init_args.batch_size=8",
            *quiet_trainer_args(tmp), *extra]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ckpt_path_last_tests_the_run_of_the_configured_normalizer(tmp_path, capsys):
    sparse = MMKitCLI(args=["fit", *args(tmp_path, normalizer="sparsemax")])
    soft = MMKitCLI(args=["fit", *args(tmp_path)])  # newer, same logger name
    sparse_dir, soft_dir = Path(sparse.trainer.log_dir), Path(soft.trainer.log_dir)
    assert (sparse_dir.name, soft_dir.name) == ("version_0", "version_1")
    records = {d: digest(d / "config.yaml") for d in (sparse_dir, soft_dir)}

    tested = MMKitCLI(args=["test", *args(tmp_path, normalizer="sparsemax"), "--ckpt_path=last"])
    assert tested.trainer.ckpt_path == str(sparse_dir / "checkpoints" / "last.ckpt")
    assert Path(tested.trainer.log_dir) == sparse_dir
    assert type(tested.model.network.output_normalizer).__name__ == "SparseMax"
    assert {d: digest(d / "config.yaml") for d in records} == records  # the fits' records are untouched
    assert (sparse_dir / "config.test.yaml").is_file() and not (soft_dir / "config.test.yaml").exists()

    # No run of this normalizer: one line that lists what exists, nothing written.
    capsys.readouterr()
    files = sorted(p for p in tmp_path.rglob("*"))
    assert main(["test", *args(tmp_path, normalizer="multimax"), "--ckpt_path=last"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run under" in err[0], err
    assert "version_0: network.normalizer: checkpoint SparseMax vs config MultiMax" in err[0]
    assert "version_1: network.normalizer: checkpoint SoftMax vs config MultiMax" in err[0]
    assert sorted(p for p in tmp_path.rglob("*")) == files


def test_test_predict_and_resume_append_to_the_run_record(tmp_path):
    fit = MMKitCLI(args=["fit", *args(tmp_path)])
    run = Path(fit.trainer.log_dir)
    trained = (run / "config.yaml").read_text()
    assert "max_steps: 3" in trained
    for n in (1, 2):
        MMKitCLI(args=["test", *args(tmp_path, "--trainer.max_steps=-1"), "--ckpt_path=last"])
    MMKitCLI(args=["predict", *args(tmp_path, "--trainer.limit_predict_batches=1"), "--ckpt_path=last"])
    resumed = MMKitCLI(args=["fit", *args(tmp_path, steps=5), "--ckpt_path=last"])
    assert Path(resumed.trainer.log_dir) == run and resumed.trainer.global_step == 5
    assert (run / "config.yaml").read_text() == trained
    names = sorted(p.name for p in run.glob("config*.yaml"))
    assert names == ["config.predict.yaml", "config.resume-1.yaml", "config.test-2.yaml",
                     "config.test.yaml", "config.yaml"]
    assert "max_steps: -1" in (run / "config.test.yaml").read_text()
    assert "max_steps: 5" in (run / "config.resume-1.yaml").read_text()
    assert "last.ckpt" in (run / "config.resume-1.yaml").read_text()  # records where it resumed from


def test_a_new_fit_never_shares_a_run_directory_with_checkpoints(tmp_path, capsys):
    MMKitCLI(args=["fit", *args(tmp_path, "--trainer.logger.init_args.version=pinned")])
    assert main(["fit", *args(tmp_path, "--trainer.logger.init_args.version=pinned")]) == 2
    err = capsys.readouterr().err
    assert "already holds a run with checkpoints" in err and "--ckpt_path last" in err


def test_checkpoint_records_its_definition_and_loads_by_itself(tmp_path):
    fit = MMKitCLI(args=["fit", *args(tmp_path, normalizer="multimax")])
    last = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)  # the safe loader reads every mmkit checkpoint
    record = ckpt["mmkit"]
    assert record["version"] and set(record["val_metrics"]) >= {"val/acc1", "val/loss"}
    assert record["definition"]["task"] == "mmkit.tasks.ImageClassification"
    assert record["definition"]["network"]["init_args"]["normalizer"] == "multimax"
    assert record["definition"]["data"] == {"class_path": "mmkit.data.ImageDataModule", "dataset": "mnist5k",
                                            "img_size": None}
    model = ImageClassification.load_from_checkpoint(last).eval()  # from the checkpoint alone
    assert type(model.network.blocks[0].attn.normalizer).__name__ == "MultiMax"
    saved = fit.model.eval()
    for key, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    images = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(images), saved(images))
    network = load_network(last)  # without Lightning: the network from the checkpoint's record
    assert type(network.blocks[0].attn.normalizer).__name__ == "MultiMax"
    assert torch.equal(network(images), saved.network(images))
    assert recorded_network(ckpt) == record["definition"]["network"]
    (last.parent.parent / "config.yaml").unlink()  # the record alone is enough
    assert torch.equal(load_network(last)(images), saved.network(images))


def test_equivalent_spellings_of_a_normalizer_are_one_definition():
    from mmkit.cli.provenance import differences

    base = {"task": "T", "network": {"class_path": "N", "init_args": {"depth": 2, "normalizer": "multimax"}}}
    same = {"task": "T", "network": {"class_path": "N", "init_args": {
        "depth": 2, "normalizer": {"class_path": "mmkit.normalizers.MultiMax", "init_args": {"order": 2}}}}}
    assert differences(base, same) == []
    other = {"task": "T", "network": {"class_path": "N", "init_args": {
        "depth": 3, "normalizer": {"name": "multimax", "order": 3}}}}
    assert differences(base, other) == ["network.depth: checkpoint 2 vs config 3",
                                        "network.normalizer.order: checkpoint 2 vs config 3"]
    entmax = {**base, "network": {"class_path": "N", "init_args": {"depth": 2, "normalizer": "entmax15"}}}
    assert differences(base, entmax) == ["network.normalizer: checkpoint MultiMax vs config Entmax15"]


def test_the_evaluation_protocol_may_differ_but_not_the_training_memory():
    from mmkit.cli.provenance import differences

    def txl(**init):
        return {"task": "T", "network": {"class_path": "mmkit.models.TransformerXL",
                                         "init_args": {"vocab_size": 10, "mem_len": 16, **init}}}

    trained = txl(eval_mem_len=None)
    assert differences(trained, txl(eval_mem_len=640, eval_clamp_len=400, eval_same_length=True)) == []
    assert differences(trained, txl(mem_len=32)) == ["network.mem_len: checkpoint 16 vs config 32"]


def test_two_loggers_share_one_version_and_resume_together(tmp_path):
    tb = TB % (tmp_path / "tb")
    first = MMKitCLI(args=["fit", *args(tmp_path, tb)])
    csv_logger, tb_logger = first.trainer.loggers
    assert type(tb_logger).__name__ == "TensorBoardLogger"
    assert Path(csv_logger.log_dir).name == Path(tb_logger.log_dir).name == "version_0"
    (tmp_path / "tb" / "vit_mix" / "version_1").mkdir()  # another TensorBoard run: both move on
    second = MMKitCLI(args=["fit", *args(tmp_path, tb)])
    assert {Path(logger.log_dir).name for logger in second.trainer.loggers} == {"version_2"}

    resumed = MMKitCLI(args=["fit", *args(tmp_path, tb, steps=5), "--ckpt_path=last"])
    assert resumed.trainer.global_step == 5
    assert resumed.trainer.ckpt_path == str(Path(second.trainer.log_dir) / "checkpoints" / "last.ckpt")
    assert {Path(logger.log_dir).name for logger in resumed.trainer.loggers} == {"version_2"}
    with open(Path(second.trainer.log_dir) / "metrics.csv") as f:
        losses = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(losses) == 5  # one run of 5 steps, continued in its own directory


def test_weights_only_checkpoints_are_checked_from_their_hyperparameters(tmp_path, capsys):
    fit = MMKitCLI(args=["fit", *args(tmp_path, "--checkpoint.save_weights_only=true")])
    last = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert "mmkit" not in torch.load(last, weights_only=True)  # callbacks do not see weights-only saves
    assert main(["test", *args(tmp_path, normalizer="entmax15"), f"--ckpt_path={last}"]) == 2
    assert "network.normalizer: checkpoint SoftMax vs config Entmax15" in capsys.readouterr().err
    tested = MMKitCLI(args=["test", *args(tmp_path), f"--ckpt_path={last}"])
    assert "test/acc1" in tested.trainer.callback_metrics


def test_fit_last_without_a_matching_run_says_so_and_starts_a_new_one(tmp_path):
    MMKitCLI(args=["fit", *args(tmp_path)])
    with pytest.warns(UserWarning, match="no run under .* was trained with this config: version_0: "
                                         "network.normalizer: checkpoint SoftMax vs config MultiMax"):
        other = MMKitCLI(args=["fit", *args(tmp_path, normalizer="multimax"), "--ckpt_path=last"])
    assert Path(other.trainer.log_dir).name == "version_1" and other.trainer.global_step == 3


SLURM_ENV = {"SLURM_JOB_ID": "91", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "mmkit-test",
             "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


def test_an_hpc_checkpoint_of_another_config_is_refused(tmp_path, monkeypatch, capsys):
    fit = MMKitCLI(args=["fit", *args(tmp_path)])
    root = tmp_path / "slurm_job"
    root.mkdir()
    last = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    (root / "hpc_ckpt_1.ckpt").write_bytes(last.read_bytes())
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    job = args(tmp_path, f"--trainer.default_root_dir={root}", "--trainer.logger.init_args.name=job",
               normalizer="sparsemax")
    for ckpt in ([], ["--ckpt_path=last"]):  # Lightning would load it by itself; `last` prefers it
        capsys.readouterr()
        assert main(["fit", *job, *ckpt]) == 2
        err = capsys.readouterr().err
        assert "hpc_ckpt_1.ckpt was trained as a different model" in err
        assert "network.normalizer: checkpoint SoftMax vs config SparseMax" in err
    assert not (tmp_path / "job").exists()  # nothing written


@pytest.mark.parametrize("task", ["lm", "mt"])
def test_language_model_and_translator_load_from_their_checkpoints(task, tmp_path):
    from mmkit.tasks import LanguageModeling, Translation

    from . import test_cli_lm, test_cli_mt

    config, tiny, cls = {"lm": (test_cli_lm.KJV, test_cli_lm.tiny, LanguageModeling),
                         "mt": (test_cli_mt.NUMBERS, test_cli_mt.tiny, Translation)}[task]
    fit = MMKitCLI(args=["fit", "-c", config, *tiny(tmp_path, steps=1)])
    model = cls.load_from_checkpoint(Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt")
    assert type(model.network) is type(fit.model.network)
    trained = fit.model.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())
    network = load_network(Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt")
    assert type(network) is type(fit.model.network) and not network.training
    assert all(torch.equal(value, trained[f"network.{key}"]) for key, value in network.state_dict().items())


def test_load_network_rebuilds_only_mmkit_networks(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"network": {"class_path": "os.system",
                                                                   "init_args": {"command": "true"}}}}, path)
    with pytest.raises(ValueError, match="only mmkit.models networks"):
        load_network(path)


class Trusted:
    """A harmless object that the safe loader cannot create (an old checkpoint's extra)."""


def test_a_checkpoint_with_other_objects_loads_only_when_trusted(tmp_path, capsys):
    fit = MMKitCLI(args=["fit", *args(tmp_path)])
    ckpt = torch.load(Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    old = tmp_path / "old.ckpt"
    torch.save({**ckpt, "extra": Trusted()}, old)
    assert main(["test", *args(tmp_path), f"--ckpt_path={old}"]) == 2
    err = capsys.readouterr().err
    assert "holds Python objects (tests.test_provenance.Trusted)" in err and "--weights_only false" in err
    tested = MMKitCLI(args=["test", *args(tmp_path), f"--ckpt_path={old}", "--weights_only=false"])
    assert "test/acc1" in tested.trainer.callback_metrics


def test_last_in_an_explicit_checkpoint_dir_of_another_run_is_refused(tmp_path, capsys):
    ckpts = f"--checkpoint.dirpath={tmp_path / 'ckpts'}"
    MMKitCLI(args=["fit", *args(tmp_path, ckpts)])
    before = (tmp_path / "ckpts" / "last.ckpt").read_bytes()
    assert main(["fit", *args(tmp_path, ckpts, normalizer="sparsemax"), "--ckpt_path=last"]) == 2
    err = capsys.readouterr().err
    assert "holds another run's checkpoints" in err and "checkpoint SoftMax vs config SparseMax" in err
    assert (tmp_path / "ckpts" / "last.ckpt").read_bytes() == before
    resumed = MMKitCLI(args=["fit", *args(tmp_path, ckpts, steps=4), "--ckpt_path=last"])
    assert resumed.trainer.global_step == 4


def test_checkpoints_of_a_cli_built_without_a_subcommand_record_the_definition(tmp_path):
    cli = MMKitCLI(args=[*args(tmp_path, "--trainer.max_steps=1", normalizer="entmax15")], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    record = torch.load(last, weights_only=True)["mmkit"]["definition"]
    assert record["network"]["init_args"]["output_normalizer"] == "entmax15"


def test_ckpt_path_hpc_without_one_is_an_error_and_a_remote_path_is_flagged(tmp_path, capsys):
    assert main(["test", *args(tmp_path), "--ckpt_path=hpc"]) == 2
    assert "--ckpt_path hpc: no hpc_ckpt_*.ckpt" in capsys.readouterr().err
    from jsonargparse import Namespace

    from mmkit.cli.runs import resolve_checkpoint

    config = Namespace(ckpt_path="s3://bucket/run/last.ckpt", trainer=Namespace(default_root_dir=None))
    with pytest.warns(UserWarning, match="is not a local file: mmkit cannot check it"):
        resolve_checkpoint(config, {"task": "T"}, "test", trust=False)
