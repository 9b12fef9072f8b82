"""A catalogue of bad input to `mmkit`: each case must end with ONE line
(`mmkit: error: <what is wrong>; <what to do>`), exit status 2, and leave every file that
existed before unchanged, with no new file written (no checkpoint, no partial file).

Each case is a distinct input; the one-line contract is checked in-process through
``mmkit.cli.main``. The NaN/Inf guard (``nan_guard``) has its own tests at the end.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mmkit.entry import main

from .conftest import quiet_trainer_args

ROOT = Path(__file__).resolve().parents[1]
MNIST = str(ROOT / "configs/vit/mnist.yaml")
KJV = str(ROOT / "configs/lm/kjv.yaml")
NUMBERS = str(ROOT / "configs/mt/numbers_en_de.yaml")
LATIN1 = "grün gemüse\n".encode("latin-1")  # not UTF-8
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

pytestmark = pytest.mark.usefixtures("in_tmp")


def vit(tmp: Path) -> list[str]:
    return ["fit", "-c", MNIST, "--model.network.init_args.preset=test", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--data.init_args.batch_size=8", *quiet_trainer_args(tmp / "logs")]


def lm(tmp: Path, *data: str) -> list[str]:
    return ["fit", "-c", KJV, "--model.network.init_args.preset=test",
            "--model.network.init_args.vocab_size=300", "--data.init_args.vocab_size=300",
            "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2",
            "--data.init_args.tgt_len=8", "--trainer.max_steps=2", *quiet_trainer_args(tmp / "logs"),
            *[f"--data.init_args.{d}" for d in data]]


def mt(tmp: Path, root: Path) -> list[str]:
    return ["fit", "-c", NUMBERS, "--model.network.init_args.preset=test",
            "--model.network.init_args.vocab_size=400", "--data.init_args.vocab_size=400",
            "--trainer.max_steps=2", "--trainer.num_sanity_val_steps=0", *quiet_trainer_args(tmp / "logs"),
            "--data.init_args.corpus=parallel", f"--data.init_args.root={root}"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def words(rng: random.Random, n_lines: int) -> str:
    vocab = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]
    return "".join(" ".join(rng.choices(vocab, k=rng.randint(3, 9))) + "\n" for _ in range(n_lines))


def corpus_dir(tmp: Path, **override: str | bytes) -> Path:
    """train/valid/test.txt of random words; ``override`` replaces a split's content."""
    rng = random.Random(1)
    for split in ("train", "valid", "test"):
        write(tmp / "corpus" / f"{split}.txt", override.get(split, words(rng, 40)))
    return tmp / "corpus"


def parallel_dir(tmp: Path, **override: str | bytes) -> Path:
    """``{split}.en``/``{split}.de``, line-aligned; ``override`` keys like ``train_de``."""
    rng = random.Random(2)
    for split in ("train", "valid", "test"):
        n = rng.randint(20, 30)
        for lang in ("en", "de"):
            write(tmp / "par" / f"{split}.{lang}", override.get(f"{split}_{lang}", words(rng, n)))
    return tmp / "par"


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickled_code(tmp: Path) -> Path:
    return fake_checkpoint(tmp / "evil.ckpt", payload=_Payload(tmp / "PAYLOAD_RAN"))


def recorded_as(tmp: Path, *overrides: str) -> Path:
    """A checkpoint that records the definition of ``vit(tmp)`` with ``overrides``."""
    from mmkit.cli import MMKitCLI
    from mmkit.cli.provenance import definition

    cli = MMKitCLI(args=[*vit(tmp)[1:], *overrides], run=False)
    return fake_checkpoint(tmp / "other.ckpt", mmkit={"definition": definition(cli.config)})


def fake_checkpoint(path: Path, **extra) -> Path:
    torch.save({"state_dict": {"network.head.weight": torch.randn(3, 4)}, "epoch": 0,
                "global_step": 1, **extra}, path)
    return path


def image_folder(tmp: Path, sizes: list[tuple[int, int]], splits=("train", "val")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in splits:
        for label in ("cat", "dog"):
            for i, (w, h) in enumerate(sizes):
                path = tmp / "images" / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return tmp / "images"


def unreadable_file(tmp: Path) -> Path:
    """A text file this process cannot read: mode 000, or (root ignores modes) /proc/self/mem,
    a real file whose first bytes give an I/O error."""
    if AS_ROOT:
        return Path("/proc/self/mem")
    path = write(tmp / "secret.txt", words(random.Random(3), 50))
    path.chmod(0)
    return path


def under_a_file(tmp: Path, name: str) -> str:
    """An output path below a regular file: not creatable, even for root."""
    write(tmp / "file.txt", "I am a file\n")
    return str(tmp / "file.txt" / name)


# id -> (build the argv in tmp, substrings the one line must contain)
Case = tuple[Callable[[Path], list[str]], tuple[str, ...]]
CASES: dict[str, Case] = {
    # --- config files and options --------------------------------------------------------
    "malformed-yaml": (lambda t: [*vit(t), "-c", str(write(t / "bad.yaml", "model: [unclosed\n  x: 1\n"))],
                       ("bad.yaml is not valid YAML", "line 2", "fix the file")),
    "yaml-not-utf8": (lambda t: [*vit(t), "-c", str(write(t / "bad.yaml", b"name: " + LATIN1))],
                      ("is not UTF-8 text", "save it as UTF-8")),
    "missing-config-file": (lambda t: [*vit(t), "-c", str(t / "nope.yaml")],
                            ("nope.yaml does not exist", "check the path")),
    "unknown-key-in-yaml": (lambda t: [*vit(t), "-c", str(write(t / "u.yaml", "trainer: {max_epochz: 3}\n"))],
                            ("does not accept option 'trainer.max_epochz'", "check its spelling")),
    "unknown-model-option-in-yaml": (
        lambda t: [*vit(t), "-c", str(write(t / "u.yaml", "model:\n  init_args:\n    network:\n"
                                                            "      init_args: {dept: 3}\n"))],
        ("model.network: Option 'dept' is not accepted", "--help")),
    "unknown-option-on-command-line": (lambda t: [*vit(t), "--nosuch=1"],
                                       ("unrecognized arguments: --nosuch=1",)),
    "abbreviated-option": (lambda t: [*vit(t), "--trainer.max_step=1"],  # not --trainer.max_steps
                           ("unrecognized arguments: --trainer.max_step=1",)),
    "unknown-subcommand": (lambda t: ["fitt", "-c", MNIST], ("unknown command 'fitt'", "fit, validate")),
    "missing-init-weights": (lambda t: [*vit(t), f"--model.init_args.init_weights={t / 'no_export'}"],
                             ("no_export not found", "an export directory")),
    "unknown-normalizer-in-yaml": (
        lambda t: [*vit(t), "-c", str(write(t / "n.yaml", "model:\n  init_args:\n    network:\n"
                                                            "      init_args: {output_normalizer: xmax}\n"))],
        ("unknown normalizer 'xmax'", "choose one of softmax")),
    # --- wrong types -----------------------------------------------------------------------
    "string-for-int": (lambda t: [*vit(t), "--data.init_args.batch_size=abc"],
                       ("invalid value 'abc' for data.batch_size: expected int",)),
    "string-for-float": (lambda t: [*vit(t), "--model.init_args.optimizer.init_args.lr=fast"],
                         ("invalid value 'fast' for model.optimizer.lr: expected float",)),
    "float-for-int": (lambda t: [*vit(t), "--trainer.max_epochs=1.5"],
                      ("invalid value '1.5' for trainer.max_epochs: expected int",)),
    "value-not-in-choices": (lambda t: [*vit(t), "--data.init_args.augment=heavy"],
                             ("invalid value 'heavy' for data.augment: expected one of 'none', 'light'",)),
    "unknown-precision": (lambda t: [*vit(t), "--trainer.precision=banana"],
                          ("invalid value 'banana' for trainer.precision", "'bf16-mixed'")),
    # --- negative or zero sizes ----------------------------------------------------------
    "negative-batch-size": (lambda t: [*vit(t), "--data.init_args.batch_size=-4"],
                            ("batch sizes must be positive, got -4",)),
    "zero-image-size": (lambda t: [*vit(t), "--data.init_args.img_size=0"], ("img_size must be positive",)),
    "zero-depth": (lambda t: [*vit(t), "--model.network.init_args.depth=0"], ("depth must be positive",)),
    "negative-width": (lambda t: [*vit(t), "--model.network.init_args.embed_dim=-8"],
                       ("embed_dim must be positive, got -8",)),
    "zero-segment-length": (lambda t: lm(t, "corpus=pydoc", "tgt_len=0"), ("tgt_len must be positive",)),
    "negative-nan-guard-interval": (lambda t: [*vit(t), "--nan_guard.check_every_n_steps=-1"],
                                    ("check_every_n_steps must be >= 0", "0 turns the guard off")),
    # --- missing or unreadable data --------------------------------------------------------
    "missing-text-corpus": (lambda t: lm(t, "corpus=text", f"root={t / 'none'}"),
                            ("text corpus not found", "train.txt, valid.txt and test.txt")),
    "missing-wikitext-file": (lambda t: lm(t, "corpus=wikitext", f"root={corpus_dir(t)}"),
                              ("WikiText files missing", "wiki.train.tokens")),
    "unreadable-text-file": (lambda t: lm(t, "corpus=text", f"root={unreadable_file(t)}"),
                             ("cannot read", "check that it is a readable text file")),
    "text-split-is-a-directory": (lambda t: lm(t, "corpus=text", f"root={_dir_split(t)}"),
                                  ("cannot read", "valid.txt", "Is a directory")),
    "missing-imagefolder-val": (
        lambda t: [*vit(t), "--data.init_args.dataset=imagefolder",
                   f"--data.init_args.root={image_folder(t, [(8, 8)], splits=('train',))}"],
        ("imagefolder data not found", "val/<class>/<image>")),
    "missing-tokenizer-file": (lambda t: lm(t, "corpus=pydoc", f"tokenizer_path={t / 'tok.json'}"),
                               ("tok.json does not exist", "tokenizer.json saved in the run directory")),
    "tokenizer-file-not-json": (lambda t: lm(t, "corpus=pydoc", f"tokenizer_path={write(t / 't.json', 'x')}"),
                                ("is not a tokenizers JSON file",)),
    # --- empty, mismatched, not UTF-8 --------------------------------------------------------
    "empty-train-text": (lambda t: lm(t, "corpus=text", f"root={corpus_dir(t, train='')}"),
                         ("the train split of corpus 'text'", "is empty")),
    "blank-single-file-corpus": (lambda t: lm(t, "corpus=text", f"root={write(t / 'c.txt', chr(10) * 9)}"),
                                 ("split of corpus 'text'", "is empty")),
    "text-not-utf8": (lambda t: lm(t, "corpus=text", f"root={write(t / 'c.txt', LATIN1 * 300)}"),
                      ("c.txt is not UTF-8 text", "iconv")),
    "empty-parallel-train-files": (lambda t: mt(t, parallel_dir(t, train_en="", train_de="")),
                                   ("no sentence pairs", "train.en and train.de")),
    "mismatched-parallel-files": (lambda t: mt(t, parallel_dir(t, train_de="eins\nzwei\n")),
                                  ("parallel files differ in length", "line-aligned")),
    "parallel-file-not-utf8": (lambda t: mt(t, parallel_dir(t, valid_de=LATIN1 * 20)),
                               ("valid.de is not UTF-8 text",)),
    "missing-parallel-file": (lambda t: mt(t, _without(parallel_dir(t), "test.de")),
                              ("missing", "test.de", "for the language pair en-de")),
    # --- images of the wrong size ----------------------------------------------------------
    "model-expects-other-image-size": (lambda t: [*vit(t), "--model.network.init_args.img_size=35"],
                                       ("images of shape [B, 1, 28, 28]", "do not fit this VisionTransformer",
                                        "it expects [B, 1, 35, 35]")),
    "model-expects-other-channels": (lambda t: [*vit(t), "--model.network.init_args.in_chans=3"],
                                     ("images of shape [B, 1, 28, 28]", "it expects [B, 3, 28, 28]")),
    "model-has-other-classes": (lambda t: [*vit(t), "--model.network.init_args.num_classes=7"],
                                ("the data has 10 classes but the network outputs 7",)),
    "lm-vocab-smaller-than-tokenizer": (
        lambda t: [*lm(t, "corpus=pydoc"), "--model.network.init_args.vocab_size=50"],
        ("the tokenizer has", "the network's vocab_size is 50")),
    "mt-vocab-smaller-than-tokenizer": (
        lambda t: [*mt(t, parallel_dir(t)), "--model.network.init_args.vocab_size=20"],
        ("the tokenizer has", "the network's vocab_size is 20")),
    "segment-longer-than-the-corpus": (lambda t: lm(t, "corpus=pydoc", "tgt_len=1000000000"),
                                       ("tgt_len=1000000000 is longer than the train split can fill",)),
    "damaged-tokenizer-in-the-run-directory": (
        lambda t: [*lm(t, "corpus=pydoc"), "--trainer.logger.init_args.version=7",
                   f"--trainer.logger.init_args.name={_damaged_tokenizer_run(t)}"],
        ("the run's", "tokenizer.json is not a tokenizers JSON file", "restore it")),
    # --- checkpoints ---------------------------------------------------------------------
    "missing-checkpoint": (lambda t: [*vit(t), f"--ckpt_path={t / 'nope.ckpt'}"],
                           ("nope.ckpt does not exist", "--ckpt_path last")),
    "checkpoint-path-is-a-directory": (lambda t: [*vit(t), f"--ckpt_path={t}"],
                                       ("is a directory", "pass a .ckpt file")),
    "truncated-checkpoint": (lambda t: [*vit(t), f"--ckpt_path={_truncated(t)}"],
                             ("unreadable", "truncated or corrupt")),
    "checkpoint-of-another-model": (lambda t: [*vit(t), f"--ckpt_path={fake_checkpoint(t / 'other.ckpt')}"],
                                    ("does not fit this model", "missing keys", "shape mismatch")),
    "checkpoint-of-another-normalizer": (
        lambda t: ["test", *vit(t)[1:],
                   f"--ckpt_path={recorded_as(t, '--model.network.normalizer=sparsemax')}"],
        ("other.ckpt was trained as a different model than this config asks for",
         "network.normalizer: checkpoint SparseMax vs config SoftMax")),
    "checkpoint-of-another-task-data": (
        lambda t: [*vit(t), f"--ckpt_path={recorded_as(t, '--data.init_args.img_size=32')}"],
        ("data.img_size: checkpoint 32 vs config null",)),
    "pickled-code-in-checkpoint": (lambda t: ["test", *vit(t)[1:], f"--ckpt_path={pickled_code(t)}"],
                                   ("evil.ckpt holds Python objects (posix.system)", "nothing in it was run",
                                    "--weights_only false")),
    "pickled-code-under-weights-only": (
        lambda t: [*vit(t), "--weights_only=true", f"--ckpt_path={pickled_code(t)}"],
        ("holds Python objects (posix.system) that the safe loader refuses",)),
    "test-last-without-a-matching-run": (lambda t: ["test", *vit(t)[1:], "--ckpt_path=last"],
                                         ("--ckpt_path last: no run under", "was trained with this config",
                                          "version_0: checkpoint", "is unreadable")),
    # --- Lightning's own option checks, and values it would misread -------------------------
    "negative-max-epochs": (lambda t: [*vit(t), "--trainer.max_epochs=-5"],
                            ("`max_epochs` must be a non-negative integer or -1",)),
    "unknown-checkpoint-mode": (lambda t: [*vit(t), "--checkpoint.mode=maximum"],
                                ("`mode` can be min, max but got maximum",)),
    "accelerator-not-available": (lambda t: [*vit(t), "--trainer.accelerator=cuda"],
                                  ("`CUDAAccelerator` can not run on your system",)),
    "zero-val-check-interval": (lambda t: [*vit(t), "--trainer.val_check_interval=0"],
                                ("trainer.val_check_interval must be positive",)),
    "negative-gradient-clip": (lambda t: [*vit(t), "--trainer.gradient_clip_val=-1"],
                               ("trainer.gradient_clip_val must be >= 0",)),
    "config-section-not-a-mapping": (lambda t: [*vit(t), "-c", str(write(t / "s.yaml", "trainer: 3\n"))],
                                     ("`trainer` must be a mapping of options", "got 3")),
    "abstract-normalizer-class": (
        lambda t: [*vit(t), "--model.network.normalizer=mmkit.normalizers.Normalizer"],
        ("is not a normalizer but their base class, which normalizes nothing",)),
    "logger-name-is-a-file": (
        lambda t: [*vit(t), f"--trainer.logger.init_args.name={write(t / 'f.txt', 'x')}"],
        ("cannot create the output directory", "is a file")),
    "duplicate-yaml-key": (lambda t: [*vit(t), "-c", str(write(t / "d.yaml", "trainer:\n  max_epochs: 3\n"
                                                                           "  max_epochs: 5\n"))],
                           ("the key 'max_epochs' is given twice (first on line 2)",)),
    "empty-prompt-list": (lambda t: lm(t, "corpus=pydoc", "prompts=[]"), ("data.prompts is an empty list",)),
    "demo-with-arguments": (lambda t: ["demo", "--normalizer=multimax"],
                            ("`mmkit demo` takes no arguments",)),
    "missing-predict-file": (
        lambda t: [*mt(t, parallel_dir(t)), f"--data.init_args.predict_file={t / 'in.en'}"],
        ("data.predict_file", "in.en does not exist")),
    "predict-file-is-a-directory": (lambda t: [*mt(t, parallel_dir(t)), f"--data.init_args.predict_file={t}"],
                                    ("data.predict_file", "is a directory")),
    # --- output directory not writable -------------------------------------------------------
    "log-dir-below-a-file": (
        lambda t: [*vit(t), f"--trainer.logger.init_args.save_dir={under_a_file(t, 'logs')}"],
        ("cannot create the output directory", "is a file", "trainer.logger.init_args.save_dir")),
    "checkpoint-dir-below-a-file": (lambda t: [*vit(t), f"--checkpoint.dirpath={under_a_file(t, 'ckpts')}"],
                                    ("cannot create the output directory", "checkpoint.dirpath")),
    "root-dir-below-a-file": (lambda t: [*vit(t), "--trainer.logger=false",
                                         f"--trainer.default_root_dir={under_a_file(t, 'out')}"],
                              ("cannot create the output directory", "trainer.default_root_dir")),
}


def _dir_split(tmp: Path) -> Path:
    root = corpus_dir(tmp)
    (root / "valid.txt").unlink()
    (root / "valid.txt").mkdir()
    return root


def _damaged_tokenizer_run(tmp: Path) -> str:
    """A run folder (name ``lm_run``, version 7) whose saved tokenizer.json is cut short."""
    write(tmp / "logs" / "lm_run" / "version_7" / "tokenizer.json", '{"version": "1.0", "trunc')
    return "lm_run"


def _without(root: Path, name: str) -> Path:
    (root / name).unlink()
    return root


def _truncated(tmp: Path) -> Path:
    full = fake_checkpoint(tmp / "full.ckpt", optimizer_states=[{"w": torch.randn(64, 64)}])
    data = full.read_bytes()
    return write(tmp / "cut.ckpt", data[: len(data) // 2])


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content (mode-000 files by size and mtime),
    and every directory (an empty run folder left behind counts as a change)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            out[str(p.relative_to(root))] = "<dir>"
        elif p.is_file():
            try:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            except PermissionError:
                out[str(p.relative_to(root))] = f"{p.stat().st_size}:{p.stat().st_mtime_ns}"
    return out


def previous_run(tmp: Path) -> None:
    """Files of an earlier run that a failing command must not touch."""
    run = tmp / "logs" / "vit_mnist" / "version_0"
    write(run / "checkpoints" / "last.ckpt", random.Random(4).randbytes(256))
    write(run / "config.yaml", "seed_everything: 0\n")
    write(run / "metrics.csv", "epoch,step,train/loss\n0,0,2.3\n")


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    build, needles = CASES[case]
    previous_run(tmp_path)
    args = build(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit: error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    assert "Traceback" not in err[0] and len(err[0]) < 600, err[0]
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before  # nothing overwritten
    assert set(after) == set(before), set(after) ^ set(before)  # nothing new, not even a run folder


def test_catalogue_covers_the_issue():
    assert len(CASES) >= 25


@pytest.mark.skipif(AS_ROOT, reason="root ignores directory permissions (the below-a-file cases cover root)")
def test_read_only_output_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main([*vit(tmp_path), f"--trainer.logger.init_args.save_dir={locked / 'logs'}"]) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not writable" in err[0] and not any(locked.iterdir())


def test_image_folder_of_mixed_sizes_is_resized(tmp_path):
    """Files of any size (the ImageNet layout) are resized and center-cropped to img_size,
    not stacked as they are (which failed in the DataLoader)."""
    from mmkit.data import ImageDataModule

    root = image_folder(tmp_path, [(40, 30), (50, 61), (33, 33)])
    for augment in ("none", "light"):
        dm = ImageDataModule(dataset="imagefolder", root=str(root), img_size=24, batch_size=6,
                             augment=augment)
        dm.setup("fit")
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            images, labels = next(iter(loader))
            assert images.shape == (6, 3, 24, 24) and torch.isfinite(images).all()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_file_is_an_error_naming_it(tmp_path, damage):
    """A corrupt or truncated file in an image folder: a ValueError (one `mmkit: error:`
    line from the command) that names the file, not PIL's traceback."""
    from mmkit.data import ImageDataModule

    root = image_folder(tmp_path, [(20, 20)] * 4)
    bad = root / "train" / "dog" / "2.png"
    data = bad.read_bytes()
    bad.write_bytes(b"this is not an image" if damage == "garbage" else data[: len(data) // 2])
    dm = ImageDataModule(dataset="imagefolder", root=str(root), img_size=16, batch_size=8)
    dm.setup("fit")
    next(iter(dm.val_dataloader()))  # the intact split still loads
    with pytest.raises(ValueError, match=f"cannot read the image {re.escape(str(bad))} .*replace or remove"):
        next(iter(dm.train_dataloader()))  # 8 images: the whole split, the bad one included


# --- the NaN/Inf guard ---------------------------------------------------------------------

def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


DIVERGE = ["--model.init_args.optimizer.init_args.lr=1e30", "--trainer.gradient_clip_val=null",
           "--trainer.max_epochs=3", "--trainer.limit_train_batches=2"]


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    assert main([*vit(tmp_path), *DIVERGE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit: error: training diverged at global step "), err
    step = int(err[0].split("global step ")[1].split()[0])
    assert step >= 1 and "lower the learning rate" in err[0] and "nan_guard.action=warn" in err[0]
    ckpts = sorted((tmp_path / "logs").rglob("*.ckpt"))
    for path in ckpts:  # every checkpoint predates the bad step; none holds NaN/Inf
        saved = torch.load(path, weights_only=False)
        assert saved["global_step"] < step
        assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    assert not list((tmp_path / "logs").rglob("*.tmp"))


@pytest.mark.slow
def test_nan_guard_warn_and_off_let_training_go_on(tmp_path, capsys):
    for flags in (["--nan_guard.action=warn"], ["--nan_guard.check_every_n_steps=0"]):
        assert main([*vit(tmp_path), *DIVERGE, *flags]) == 0
        run = max((tmp_path / "logs" / "vit_mnist").glob("version_*"), key=lambda p: p.stat().st_mtime)
        losses = [float(r["train/loss"]) for r in metrics(run) if r.get("train/loss")]
        assert len(losses) == 6 and not all(np.isfinite(losses))  # it diverged, and went on
    capsys.readouterr()
