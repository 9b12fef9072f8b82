"""`mmkit fit|test|predict` on the translation task (tiny model, number words)."""

import csv
import math
from pathlib import Path

import pytest
import sacrebleu
import torch

from mmkit.cli import MMKitCLI
from mmkit.entry import main
from mmkit.normalizers import NORMALIZERS

from .conftest import quiet_trainer_args

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = str(ROOT / "configs/mt/numbers_en_de.yaml")
IWSLT = str(ROOT / "configs/mt/iwslt14_de_en.yaml")
OVERLAYS = sorted((ROOT / "configs/normalizer").glob("*.yaml"))


def tiny(tmp_path: Path, steps: int = 3) -> list[str]:
    return [
        "--model.network.init_args.preset=test", "--model.network.init_args.vocab_size=400",
        "--data.init_args.vocab_size=400", "--data.init_args.num_train=300",
        "--data.init_args.num_valid=12", "--data.init_args.num_test=12",
        "--data.init_args.max_tokens=512", "--data.init_args.eval_batch_size=8",
        "--data.init_args.max_number=300", "--model.init_args.beam=2",
        "--model.init_args.max_len_b=3", "--model.init_args.max_len_a=0.5",
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
        "--trainer.num_sanity_val_steps=0", *quiet_trainer_args(tmp_path),
    ]


pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.stem for p in OVERLAYS])
def test_every_normalizer_trains_and_the_logged_bleu_is_sacrebleu_on_the_files(overlay, tmp_path):
    cli = MMKitCLI(args=["fit", "-c", NUMBERS, "-c", str(overlay), *tiny(tmp_path)])
    net = cli.model.network
    assert cli.trainer.global_step == 3
    assert type(net.decoder[0].cross_attn.normalizer) is NORMALIZERS[overlay.stem]
    run = Path(cli.trainer.log_dir)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(math.isfinite(float(r["train/loss"])) for r in rows if r.get("train/loss"))
    logged = [float(r["val/bleu"]) for r in rows if r.get("val/bleu")]
    hyps = (run / "hyps.val.txt").read_text().splitlines()
    refs = (run / "refs.val.txt").read_text().splitlines()
    assert len(hyps) == len(refs) == 12 and len(logged) == 1
    assert logged[0] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-4)
    assert "tok:13a" in (run / "bleu.val.txt").read_text()


def test_test_and_predict_translate_a_file(tmp_path):
    fit = MMKitCLI(args=["fit", "-c", NUMBERS, *tiny(tmp_path)])
    run = Path(fit.trainer.log_dir)
    test = MMKitCLI(args=["test", "-c", NUMBERS, *tiny(tmp_path), "--ckpt_path=last"])
    assert math.isfinite(float(test.trainer.callback_metrics["test/bleu"]))
    assert (run / "hyps.test.txt").is_file()
    source = tmp_path / "input.en"
    source.write_text("one hundred and two ; seven\nforty-two\nnine\n")
    pred = MMKitCLI(args=["predict", "-c", NUMBERS, *tiny(tmp_path), "--ckpt_path=last",
                          f"--data.init_args.predict_file={source}"])
    lines = (Path(pred.trainer.log_dir) / "predictions.txt").read_text().split("\n")
    assert len(lines) == 4 and lines[-1] == ""  # one line out per line in


def test_mismatched_files_exit_with_one_line(tmp_path, capsys):
    (tmp_path / "train.de").write_text("a\nb\n")
    (tmp_path / "train.en").write_text("x\n")
    args = ["fit", "-c", NUMBERS, *tiny(tmp_path), "--data.init_args.corpus=parallel",
            f"--data.init_args.root={tmp_path}", "--data.init_args.src_lang=de",
            "--data.init_args.tgt_lang=en"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.de has 2 lines" in err[0] and "train.en has 1" in err[0]


def test_a_checkpoint_is_refused_with_another_tokenizer(tmp_path, capsys):
    fit = MMKitCLI(args=["fit", "-c", NUMBERS, *tiny(tmp_path, steps=1)])
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    same = MMKitCLI(args=["test", "-c", NUMBERS, *tiny(tmp_path), f"--ckpt_path={ckpt}"])
    assert "test/bleu" in same.trainer.callback_metrics  # a new run directory, the same tokenizer
    # Other training sentences give another BPE: the same ids would mean other words.
    other = [*tiny(tmp_path), "--data.init_args.max_number=900", f"--ckpt_path={ckpt}"]
    capsys.readouterr()
    assert main(["test", "-c", NUMBERS, *other]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint was trained with a different tokenizer than this run's" in err


def test_iwslt_recipe_scores_without_bpe_markers_and_records_the_official_placement(tmp_path):
    """The IWSLT'14 recipe on tiny BPE-split files (prepare-iwslt14.sh's layout): hypotheses,
    references and scores lose their "@@ " markers, both BLEUs are those of the written files,
    and the checkpoint rebuilds the official placement (softmax cross-attention)."""
    from mmkit.normalizers import MultiMax, SoftMax
    from mmkit.tasks import Translation
    from mmkit.tasks.translation import remove_bpe

    de = ["das ist ein ho@@ us .", "ein gro@@ ßes ho@@ us", "das haus ist klein", "ich sehe es"]
    en = ["this is a ho@@ use .", "a big ho@@ use", "the house is sm@@ all", "i see it"]
    root = tmp_path / "iwslt14.tokenized.de-en"
    root.mkdir()
    for split, n in (("train", 10), ("valid", 1), ("test", 1)):
        (root / f"{split}.de").write_text("\n".join(de * n) + "\n")
        (root / f"{split}.en").write_text("\n".join(en * n) + "\n")
    overlay = str(ROOT / "configs/normalizer/multimax.yaml")
    args = ["-c", IWSLT, "-c", overlay, "--model.network.init_args.preset=test",
            "--model.network.init_args.vocab_size=24", "--model.network.init_args.src_vocab_size=40",
            "--data.init_args.vocab_size=64",
            f"--data.init_args.root={root}", "--data.init_args.max_tokens=256",
            "--data.init_args.eval_batch_size=8", "--model.init_args.beam=2",
            "--model.init_args.max_len_a=1.0", "--model.init_args.max_len_b=2",
            "--trainer.precision=32", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
            "--trainer.num_sanity_val_steps=0", *quiet_trainer_args(tmp_path)]
    fit = MMKitCLI(args=["fit", *args])
    net = fit.model.network
    assert net.placement == "official" and net.activation == "relu" and net.positions == "fairseq"
    assert type(net.decoder[0].self_attn.normalizer) is MultiMax
    assert type(net.decoder[0].cross_attn.normalizer) is SoftMax
    data = fit.datamodule  # separate dictionaries: the English one first
    assert data.target_vocab_size == 4 + len({w for line in en for w in line.split()}) < data.vocab_size
    run = Path(fit.trainer.log_dir)
    hyps = (run / "hyps.val.txt").read_text().splitlines()
    refs = (run / "refs.val.txt").read_text().splitlines()
    assert refs == [remove_bpe(line) for line in en] and not any("@@" in h for h in hyps)
    with open(run / "metrics.csv") as f:
        row = [r for r in csv.DictReader(f) if r.get("val/bleu")][0]
    assert float(row["val/bleu"]) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-4)
    tok = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score
    assert float(row["val/bleu_tok"]) == pytest.approx(tok, abs=1e-4)
    ckpt = run / "checkpoints" / "last.ckpt"
    record = torch.load(ckpt, map_location="cpu", weights_only=False)["mmkit"]["definition"]
    assert record["network"]["init_args"]["placement"] == "official"
    loaded = Translation.load_from_checkpoint(ckpt)
    assert loaded.network.placement == "official" and loaded.hparams.remove_bpe
    assert type(loaded.network.decoder[0].cross_attn.normalizer) is SoftMax
