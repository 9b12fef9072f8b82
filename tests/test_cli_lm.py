"""`mmkit fit|test|predict` on the language-modeling task (tiny model, pydoc text)."""

import csv
import math
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from mmkit.cli import MMKitCLI
from mmkit.entry import main
from mmkit.normalizers import NORMALIZERS

from .conftest import quiet_trainer_args

ROOT = Path(__file__).resolve().parents[1]
KJV = str(ROOT / "configs/lm/kjv.yaml")
OVERLAYS = sorted((ROOT / "configs/normalizer").glob("*.yaml"))


def tiny(tmp_path: Path, steps: int = 3) -> list[str]:
    return [
        "--model.network.init_args.preset=test", "--model.network.init_args.vocab_size=300",
        "--data.init_args.corpus=pydoc", "--data.init_args.vocab_size=300",
        "--data.init_args.max_chars=30000", "--data.init_args.batch_size=4",
        "--data.init_args.eval_batch_size=2", "--data.init_args.tgt_len=16",
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
        "--trainer.limit_val_batches=3", "--trainer.limit_test_batches=3",
        "--model.init_args.max_new_tokens=5", *quiet_trainer_args(tmp_path),
    ]


pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.stem for p in OVERLAYS])
def test_every_normalizer_trains_with_finite_loss_and_perplexity(overlay, tmp_path):
    cli = MMKitCLI(args=["fit", "-c", KJV, "-c", str(overlay), *tiny(tmp_path)])
    assert cli.trainer.global_step == 3
    assert type(cli.model.network.attn[0].normalizer) is NORMALIZERS[overlay.stem]
    with open(Path(cli.trainer.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    ppl = [float(r["val/ppl"]) for r in rows if r.get("val/ppl")]
    bpb = [float(r["val/bpb"]) for r in rows if r.get("val/bpb")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert len(ppl) == 1 and 1.0 < ppl[0] < 1e7 and 0.0 < bpb[0] < 30.0


def test_tokenizer_is_saved_reused_on_resume_and_predict_generates(tmp_path):
    first = MMKitCLI(args=["fit", "-c", KJV, *tiny(tmp_path)])
    run = Path(first.trainer.log_dir)
    saved = Tokenizer.from_file(str(run / "tokenizer.json")).to_str()
    assert saved == first.datamodule.tokenizer.to_str()
    resumed = MMKitCLI(args=["fit", "-c", KJV, *tiny(tmp_path, steps=6), "--ckpt_path=last"])
    assert Path(resumed.trainer.log_dir) == run and resumed.trainer.global_step == 6
    test = MMKitCLI(args=["test", "-c", KJV, *tiny(tmp_path), "--ckpt_path=last"])
    assert math.isfinite(float(test.trainer.callback_metrics["test/ppl"]))
    pred = MMKitCLI(args=["predict", "-c", KJV, *tiny(tmp_path), "--ckpt_path=last",
                          "--data.init_args.prompts=[\"def main\", \"The\"]"])
    with open(Path(pred.trainer.log_dir) / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == ["def main", "The"]
    assert all(r["continuation"] for r in rows)


def test_a_mismatched_tokenizer_is_a_clear_error(tmp_path, capsys):
    first = MMKitCLI(args=["fit", "-c", KJV, *tiny(tmp_path)])
    ckpt = Path(first.trainer.log_dir) / "checkpoints" / "last.ckpt"
    # Another vocabulary size is another model: refused before anything is built.
    args = ["test", "-c", KJV, *tiny(tmp_path), "--data.init_args.vocab_size=280",
            "--ckpt_path", str(ckpt)]
    assert main(args) == 2
    assert "data.vocab_size: checkpoint 300 vs config 280" in capsys.readouterr().err
    # The same size trained on other text is another tokenizer: refused when the checkpoint loads.
    args = ["test", "-c", KJV, *tiny(tmp_path), "--data.init_args.max_chars=20000", "--ckpt_path", str(ckpt)]
    assert main(args) == 2
    assert "trained with a different tokenizer" in capsys.readouterr().err


def test_vocab_larger_than_the_network_is_a_clear_error(tmp_path, capsys):
    args = ["fit", "-c", KJV, *tiny(tmp_path), "--model.network.init_args.vocab_size=100"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "set model.network.init_args.vocab_size >= " in err and len(err.splitlines()) == 1
