"""What the ``mmkit figures`` commands read and where they write: run folders and output
paths, a run's data options and test images, checkpoint labels, and the input batch of an LM
or translator run."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from ..analysis.checkpoints import run_config, run_file
from ..data import ImageDataModule, TextDataModule, TranslationDataModule
from ..data.images import INFO
from ..data.tokenizer import load_tokenizer
from ..data.transforms import eval_transform
from ..files import write_text_atomic
from ..models import TransformerXL, VisionTransformer
from ..models.search import greedy_decode
from ..normalizers import Normalizer


def run_dir(path: str | Path) -> Path:
    """The run folder of a checkpoint (``RUN/checkpoints/x.ckpt`` -> ``RUN``) or of a log file."""
    path = Path(path).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def default_out(name: str, inputs: list[str]) -> Path:
    """``<run>/figures/<name>.png`` for the runs of ``inputs`` (their common folder for
    several), ``figures/<name>.png`` without any."""
    if not inputs:
        return Path("figures") / f"{name}.png"
    return Path(os.path.commonpath([run_dir(p) for p in inputs])) / "figures" / f"{name}.png"


def run_names(paths: list[str]) -> list[str]:
    """Short distinct names of the runs of ``paths``: their folders without the parts all
    share at the start and at the end (``a/softmax/v0``, ``a/multimax/v0`` -> ``softmax``,
    ``multimax``); one run keeps its last two folder names, files of one run add their names."""
    parts = [run_dir(p).parts for p in paths]
    if len(parts) == 1:
        return ["/".join(parts[0][-2:])]
    head = len(os.path.commonprefix(parts))
    tail = len(os.path.commonprefix([q[::-1] for q in parts]))
    names = ["/".join(q[head:len(q) - tail] if head < len(q) - tail else q[-2:]) for q in parts]
    if len(set(names)) < len(names):  # files of the same run: add the file names
        names = [f"{n} {Path(p).stem}" for n, p in zip(names, paths)]
    return names if len(set(names)) == len(names) else [f"{n} ({i})" for i, n in enumerate(names)]


def out_path(args: argparse.Namespace, name: str, inputs: list[str]) -> Path:
    return Path(args.out) if args.out is not None else default_out(name, inputs)


def run_data(ckpt: str, config: str | None) -> dict:
    """The ``data.init_args`` of a run's ``config.yaml``."""
    return dict((run_config(ckpt, config).get("data") or {}).get("init_args") or {})


def test_images(ckpt: str, config: str | None, model: VisionTransformer) -> tuple[object, str]:
    """The run's test split of ``(image [C, H, W], label)`` (evaluation transform) and its name."""

    data = run_data(ckpt, config)
    module = ImageDataModule(**{**data, "img_size": model.img_size, "download": False})
    module.setup("test")
    return module.test_set, data.get("dataset", "mnist5k")


def image_batch(ckpt: str, config: str | None, model: VisionTransformer, indices: list[int]
                ) -> tuple[torch.Tensor, list[int], str]:
    """Test images ``[n, C, H, W]``, their labels and the dataset's name."""
    test, dataset = test_images(ckpt, config, model)
    if not all(0 <= i < len(test) for i in indices):
        raise ValueError(f"test indices must be in 0..{len(test) - 1}, got {max(indices)}")
    rows = [test[i] for i in indices]
    return torch.stack([r[0] for r in rows]), [int(r[1]) for r in rows], dataset


def load_image(args: argparse.Namespace, model: VisionTransformer, ckpt: str) -> tuple[torch.Tensor, str]:
    """A normalized image ``[C, H, W]`` for ``model`` and a description of it."""

    dataset = run_data(ckpt, args.config).get("dataset", "mnist5k")
    if args.image is not None:

        picture = Image.open(args.image).convert("L" if model.in_chans == 1 else "RGB")
        native = model.img_size if picture.size == (model.img_size, model.img_size) else -1
        info = INFO[dataset]
        return eval_transform(model.img_size, info["mean"], info["std"], native=native)(picture), args.image
    images, labels, _ = image_batch(ckpt, args.config, model, [args.test_index])
    return images[0], f"{dataset} test image {args.test_index} (label {labels[0]})"


def normalizer_name(model: torch.nn.Module) -> str:
    """The name of a network's first attention normalizer (``softmax``, ``multimax``, ...)."""
    norm = next((m for m in model.modules() if isinstance(m, Normalizer)), None)
    return type(norm).__name__.lower() if norm is not None else type(model).__name__


def checkpoint_labels(paths: list[str], models: list[torch.nn.Module]) -> list[str]:
    """One label per checkpoint: its normalizer, with the run's name where they repeat."""
    names = [normalizer_name(m) for m in models]
    return names if len(set(names)) == len(names) else [f"{n} {r}" for n, r in zip(names, run_names(paths))]


def write_table(path: Path, text: str) -> None:

    write_text_atomic(path, text)


def text_forward(args: argparse.Namespace, model: torch.nn.Module, ckpt: str) -> Callable[[], object]:
    """The forward pass of a language model or translator on ``--text`` or the run's test split
    (tokenized with the run's tokenizer.json): LM windows of the eval length; translator
    sentences one at a time, teacher-forced on the reference (greedy translation for ``--text``)."""

    tok = load_tokenizer(str(run_file(ckpt, "tokenizer.json")), "the run's tokenizer {path}",
                         "layers needs the tokenizer.json that mmkit fit saved in the run folder")
    data = run_data(ckpt, args.config)
    if isinstance(model, TransformerXL):
        text = "\n".join(args.text) if args.text else TextDataModule(**data)._load()["test"][:args.chars]
        seg = int(data.get("eval_tgt_len") or data.get("tgt_len") or 64)
        ids = torch.tensor(tok.encode(text).ids[:args.num * seg], dtype=torch.long)
        rows = max(1, len(ids) // seg)
        tokens = ids[:rows * seg].view(rows, -1) if len(ids) >= seg else ids[None]
        return lambda: model(tokens)
    module = TranslationDataModule(**data)
    pairs = [(t, None) for t in args.text] if args.text else module._read_pairs()["test"][:args.num]
    eos = [model.eos_id] if module.hp.boundaries == "fairseq" else []
    inputs = []
    for source, target in pairs:
        src = torch.tensor(tok.encode(source).ids[:module.hp.max_tokens_per_sentence] + eos)
        tgt = tok.encode(target).ids if target else greedy_decode(model, src[None])[0]
        inputs.append((src[None], torch.tensor([[model.bos_id, *tgt]])))
    return lambda: [model(src, tgt) for src, tgt in inputs]
