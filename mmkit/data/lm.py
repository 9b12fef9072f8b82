"""Language-modeling data: token streams cut into B parallel streams (truncated BPTT).

Each split is tokenized once in ``setup`` (never in DataLoader workers), trimmed to a
multiple of the number of streams and viewed as ``[streams, L]``. Batch ``i`` is the
window ``[:, i·tgt_len : (i+1)·tgt_len]`` of inputs and the same shifted by one as
targets, in order, so a model's memory carries from one batch to the next.

- **Evaluation segments.** Validation and test windows are ``eval_tgt_len`` long (the
  original evaluates WikiText-103 in segments of 64 after training on 150). The windows
  never overlap and the last one is shorter, so every target of the trimmed streams
  (positions ``1 .. L-1`` of each) is scored exactly once, as the original's iterator.

- **Epochs.** Every epoch walks the streams from the start again; the task resets
  its memory at each epoch start (and before each validation/test pass).
- **DDP.** The streams are split across ranks (``batch_size`` streams per rank); each
  rank walks its own streams in order, so memory stays valid. No sampler is used.
- **Resume.** Windows are deterministic; a run resumed mid-epoch skips the windows it
  has already trained on (:meth:`StreamWindows.skip_batches`, called by
  :class:`mmkit.cli.resume.ExactResume`), and the task restores its memory from the checkpoint.
- **Tokenizer.** Trained on the training split, saved as ``tokenizer.json`` in the
  run directory; with ``tokenizer_path`` (or when the run directory already has one,
  as on ``--ckpt_path last``) it is loaded instead, and checkpoints carry it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, IterableDataset

from .corpora import Corpus, load_corpus
from .lm1b import lm1b_tokenizer, load_lm1b
from .sharding import RNGNeutralLoader
from .tokenizer import TokenizerKind, TokenizerState, encode, load_tokenizer, run_tokenizer, train_tokenizer


class StreamWindows(IterableDataset):
    """Consecutive ``(inputs, targets)`` windows ``[B, ≤tgt_len]`` of ``[B, L]`` streams."""

    def __init__(self, streams: torch.Tensor, tgt_len: int) -> None:
        self.streams, self.tgt_len = streams, tgt_len
        self._skip = 0

    def skip_batches(self, batches: int, batch_size: int | None = None) -> None:
        """Start the next ``__iter__`` at window ``batches`` (a mid-epoch resume)."""
        if batches < 0:
            raise ValueError(f"cannot skip {batches} windows")
        self._skip = batches

    def __len__(self) -> int:
        return math.ceil((self.streams.shape[1] - 1) / self.tgt_len)

    def __iter__(self):
        length = self.streams.shape[1] - 1
        skip, self._skip = self._skip, 0
        for start in range(skip * self.tgt_len, length, self.tgt_len):
            end = min(start + self.tgt_len, length)
            yield self.streams[:, start:end], self.streams[:, start + 1:end + 1]


def encode_in_chunks(tok: Tokenizer, text: str, lines: int = 200_000) -> torch.Tensor:
    """:func:`~mmkit.data.tokenizer.encode` of ``lines`` lines at a time (the same ids), so a
    large corpus never becomes one Python list of ids."""
    rows = text.splitlines(keepends=True)
    parts = [encode(tok, "".join(rows[i:i + lines])) for i in range(0, len(rows), lines)]
    return torch.cat(parts) if parts else encode(tok, text)


class TextDataModule(TokenizerState, LightningDataModule):
    """Token streams for :class:`~mmkit.tasks.LanguageModeling`.

    Args:
        corpus: ``kjv`` (embedded), ``pydoc`` (tiny, stdlib), ``wikitext`` or ``text``
            (see :mod:`mmkit.data.corpora`), or ``lm1b``: One Billion Words in the
            original Transformer-XL's layout, with its fixed vocabulary
            (:mod:`mmkit.data.lm1b`; needs ``tokenizer: word``).
        root: directory or file for ``wikitext``, ``text`` and ``lm1b``.
        tokenizer: ``bpe`` (byte-level) or ``word`` (WikiText parity).
        vocab_size: most tokens the tokenizer may have (the model's ``vocab_size``
            must be at least the tokenizer's size).
        tokenizer_path: load this ``tokenizer.json`` instead of training one.
        batch_size: parallel training streams per device.
        eval_batch_size: parallel streams for validation/test.
        tgt_len: tokens per training window (the model's segment length).
        eval_tgt_len: tokens per validation/test window (``None``: ``tgt_len``). The
            model's memory settings in eval mode are its own ``eval_*`` arguments.
        eval_fraction: share of a single-source corpus for validation, and again
            for testing.
        max_chars: use only the first characters of each split (quick runs, tests).
        prompts: what ``mmkit predict`` continues (default: the first line of the
            test split).
    """

    def __init__(self, corpus: Corpus | Literal["lm1b"] = "kjv", root: str | None = None,
                 tokenizer: TokenizerKind = "bpe", vocab_size: int = 4096,
                 tokenizer_path: str | None = None, batch_size: int = 16,
                 eval_batch_size: int = 8, tgt_len: int = 64, eval_fraction: float = 0.05,
                 max_chars: int | None = None, prompts: list[str] | None = None,
                 eval_tgt_len: int | None = None) -> None:
        super().__init__()
        eval_tgt_len = tgt_len if eval_tgt_len is None else eval_tgt_len
        for name, value in dict(vocab_size=vocab_size, batch_size=batch_size, eval_batch_size=eval_batch_size,
                                tgt_len=tgt_len, eval_tgt_len=eval_tgt_len).items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if corpus == "lm1b" and tokenizer != "word":
            raise ValueError("corpus 'lm1b' uses the benchmark's fixed word vocabulary; set data.tokenizer "
                             "to word")
        if not 0 < eval_fraction < 0.5:
            raise ValueError(f"eval_fraction must be in (0, 0.5), got {eval_fraction}")
        if prompts is not None and not prompts:
            raise ValueError("data.prompts is an empty list; give at least one prompt, or leave it unset "
                             "(null) to continue the first test line")
        self.save_hyperparameters()
        self.corpus, self.root, self.kind, self.max_vocab = corpus, root, tokenizer, vocab_size
        self.tokenizer_path = tokenizer_path
        self.batch_size, self.eval_batch_size, self.tgt_len = batch_size, eval_batch_size, tgt_len
        self.eval_tgt_len = eval_tgt_len
        self.eval_fraction, self.max_chars, self.prompts = eval_fraction, max_chars, prompts
        self.tokenizer: Tokenizer | None = None
        self._texts: dict[str, str] | None = None  # read by prepare_data, consumed by setup
        self.ids: dict[str, torch.Tensor] = {}
        self.bytes_per_token: dict[str, float] = {}

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is None:
            raise RuntimeError("the tokenizer exists after setup()")
        return self.tokenizer.get_vocab_size()

    def _load(self) -> dict[str, str]:
        if self.corpus == "lm1b":
            texts, self._lm1b_vocab = load_lm1b(self.root, self.max_chars)
        else:
            texts = load_corpus(self.corpus, self.root, self.eval_fraction)
        if self.max_chars is not None:
            texts = {split: text[:self.max_chars] for split, text in texts.items()}
        for split, text in texts.items():
            if not text.strip():
                where = f" (data.root={self.root})" if self.root else ""
                raise ValueError(f"the {split} split of corpus {self.corpus!r}{where} is empty; give it text "
                                 "(a single-source corpus needs enough lines for eval_fraction)")
        return texts

    def prepare_data(self) -> None:
        """Read and check the corpus (and a given ``tokenizer_path``) before Lightning creates
        the run directory, so a bad path or file fails with nothing written (``setup`` reuses
        the texts)."""
        if not self.ids:
            self._texts = self._load()
            if self.tokenizer_path is not None:
                load_tokenizer(self.tokenizer_path)
            self._check_segment_fits(self._texts["train"])

    def _check_segment_fits(self, text: str) -> None:
        """Refuse a ``tgt_len`` that no tokenization of the training text could fill once per
        stream, before the (slow) tokenizing: a token takes at least one byte, and the word
        tokenizer adds one ``<eos>`` per line."""
        world = self.trainer.world_size if self.trainer is not None else 1
        streams = self.batch_size * world
        most = len(text.encode("utf-8")) + text.count("\n") + 1  # >= the number of tokens
        if most // streams <= self.tgt_len:
            raise ValueError(
                f"tgt_len={self.tgt_len} is longer than the train split can fill: at most {most} tokens, "
                f"{most // streams} per stream for {streams} streams; use a smaller tgt_len, "
                "a smaller batch_size or a larger corpus")

    def setup(self, stage: str | None = None) -> None:
        if self.ids:
            return
        texts = getattr(self, "_texts", None) or self._load()
        self._texts = None
        self.tokenizer, self._unsaved = run_tokenizer(
            self.trainer, lambda: (lm1b_tokenizer(self._lm1b_vocab) if self.corpus == "lm1b"
                                   else train_tokenizer(self.kind, texts["train"], self.max_vocab)),
            self.tokenizer_path)
        self._first_test_line = next(line for line in texts["test"].splitlines() if line.strip())
        for split, text in texts.items():
            ids = encode_in_chunks(self.tokenizer, text)
            self.ids[split] = ids
            self.bytes_per_token[split] = len(text.encode("utf-8")) / max(len(ids), 1)

    def _streams(self, split: str, per_rank: int) -> StreamWindows:
        ids = self.ids[split]
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        streams = per_rank * world
        length = len(ids) // streams
        if length < 2:
            raise ValueError(
                f"the {split} split has {len(ids)} tokens, too few for {streams} streams "
                f"({per_rank} per device x {world}); use a larger corpus or fewer streams")
        if split == "train" and length <= self.tgt_len:
            raise ValueError(
                f"the train split has {len(ids)} tokens: {length} per stream, less than one "
                f"segment (tgt_len={self.tgt_len}) for {streams} streams; use a larger corpus, "
                "a smaller batch_size or a smaller tgt_len")
        grid = ids[:streams * length].view(streams, length)  # [streams, L]
        tgt_len = self.tgt_len if split == "train" else self.eval_tgt_len
        return StreamWindows(grid[rank * per_rank:(rank + 1) * per_rank], tgt_len)

    def _loader(self, split: str, per_rank: int) -> DataLoader:
        self.save_tokenizer()
        # Creating its iterator leaves the global RNG (dropout's) alone: a resumed run, which
        # skips some iterators (e.g. a finished epoch's validation), stays exact (mmkit.cli.resume).
        return RNGNeutralLoader(self._streams(split, per_rank), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        self.save_tokenizer()
        prompts = self.prompts or [self._first_test_line]
        if not all(p.strip() for p in prompts):
            raise ValueError("prompts must not be empty strings")
        encoded = [torch.tensor([self.tokenizer.encode(p).ids]) for p in prompts]  # each [1, T0]
        return DataLoader(encoded, batch_size=None)
