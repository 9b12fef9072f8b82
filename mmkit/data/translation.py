"""Parallel text for translation: embedded number words, or aligned files.

- ``numbers`` (embedded, en→de): sentences of 2-5 integers below ``max_number``
  written out by ``num2words`` (342 → "three hundred and forty-two" →
  "dreihundertzweiundvierzig"), seeded; the train, valid and test sentences are
  built from disjoint sets of numbers.
- ``parallel``: ``<root>/{train,valid,test}.{src_lang}`` and ``.{tgt_lang}``, the layout
  of fairseq's ``prepare-iwslt14.sh`` output, or any aligned files in that layout.

Pairs with an empty side are dropped from training and kept (as empty strings) in
evaluation, so references stay aligned with their files. Training pairs longer than
``max_tokens_per_sentence`` tokens on either side are dropped; evaluation sources are
truncated to that length. One joint vocabulary is built from the training split (both
sides) and saved as ``tokenizer.json`` in the run directory (``tokenizer``):

- ``bpe``: a byte-level BPE trained on the text;
- ``word``: the space-separated tokens as they are, most frequent first (fairseq-preprocess's
  dictionaries), for text that is already split into subwords, such as
  ``prepare-iwslt14.sh``'s output with its ``@@ `` markers; decoding joins tokens with single
  spaces, so the markers come back for the task's ``remove_bpe``. ``dictionaries="separate"``
  gives the target side its own dictionary (the first ids, :attr:`target_vocab_size`) as
  fairseq does; see :mod:`mmkit.data.dictionary`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from .dictionary import target_dictionary_size, word_dictionary
from .parallel_text import number_pairs, read_lines, read_parallel
from .sharding import RNGNeutralLoader, ShardSampler, rank_and_world, train_sampler
from .tokenizer import TokenizerState, run_tokenizer, train_tokenizer

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3 = the model's pad/bos/eos defaults


class TranslationDataModule(TokenizerState, LightningDataModule):
    """Token batches for :class:`~mmkit.tasks.Translation`.

    Args:
        corpus: ``numbers`` (embedded) or ``parallel`` (files under ``root``).
        root: directory of the parallel files.
        src_lang, tgt_lang: file suffixes of the source and target side.
        vocab_size: most tokens of the joint vocabulary (the model's ``vocab_size`` must
            be at least the tokenizer's size).
        tokenizer: ``bpe`` (byte-level BPE trained here) or ``word`` (the text's own
            space-separated tokens, for data that is already BPE-split).
        boundaries: ``mmkit`` (sources as they are, the decoder starts from ``<s>``) or
            ``fairseq`` (sources end with ``</s>`` and the decoder starts from ``</s>``, as in
            fairseq; the network's ``bos_id`` must then be 2, see :attr:`decoder_start_id`).
        dictionaries: ``joint`` (one vocabulary) or ``separate`` (``word`` only: a target
            dictionary of at most ``vocab_size`` entries first, then the source tokens; the
            network's ``vocab_size`` must cover :attr:`target_vocab_size` and its source
            embedding :attr:`vocab_size`).
        max_tokens: tokens per batch, bucketing similar lengths; ``token_count`` says how a
            pair counts: ``sum`` (source + target) or ``max`` (its longer side, with the EOS:
            fairseq's ``--max-tokens``, about half as many tokens as ``sum`` for the same batch).
        eval_batch_size: sentences per validation/test batch.
        max_tokens_per_sentence: longest training sentence kept / source read at eval.
        num_train, num_valid, num_test, max_number, seed: the ``numbers`` corpus.
        predict_file: text file that ``mmkit predict`` translates, one line per line.

    Checkpoints carry the tokenizer; one trained with another is refused on load.
    """

    tokenizer_hint = ("use the data settings it was trained with, or its run directory "
                      "(`--ckpt_path last` reuses the run's tokenizer.json)")

    def __init__(self, corpus: Literal["numbers", "parallel"] = "numbers", root: str | None = None,
                 src_lang: str = "en", tgt_lang: str = "de", vocab_size: int = 1000,
                 max_tokens: int = 2048, eval_batch_size: int = 64,
                 max_tokens_per_sentence: int = 256, num_train: int = 20000, num_valid: int = 500,
                 num_test: int = 500, max_number: int = 10_000, seed: int = 0,
                 predict_file: str | None = None, tokenizer: Literal["bpe", "word"] = "bpe",
                 dictionaries: Literal["joint", "separate"] = "joint",
                 boundaries: Literal["mmkit", "fairseq"] = "mmkit",
                 token_count: Literal["sum", "max"] = "sum") -> None:
        super().__init__()
        if tokenizer not in ("bpe", "word") or dictionaries not in ("joint", "separate"):
            raise ValueError(f"tokenizer must be bpe or word and dictionaries joint or separate, got "
                             f"{tokenizer!r} and {dictionaries!r}")
        if boundaries not in ("mmkit", "fairseq") or token_count not in ("sum", "max"):
            raise ValueError(f"boundaries must be mmkit or fairseq and token_count sum or max, got "
                             f"{boundaries!r} and {token_count!r}")
        if dictionaries == "separate" and tokenizer != "word":
            raise ValueError("dictionaries='separate' needs tokenizer='word' (the BPE is trained jointly)")
        for name, value in dict(vocab_size=vocab_size, max_tokens=max_tokens,
                                eval_batch_size=eval_batch_size,
                                max_tokens_per_sentence=max_tokens_per_sentence).items():
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if corpus == "parallel" and root is None:
            raise ValueError("corpus 'parallel' needs data.root (the directory of train.<lang> ...)")
        if predict_file is not None and not Path(predict_file).is_file():
            what = "is a directory" if Path(predict_file).is_dir() else "does not exist"
            raise FileNotFoundError(f"data.predict_file {predict_file} {what}; give the text file to "
                                    "translate, one sentence per line")
        self.save_hyperparameters()
        self.hp = self.hparams
        self.tokenizer: Tokenizer | None = None
        self._target_size: int | None = None  # the target dictionary's, when separate
        self.pairs: dict[str, list[tuple[str, str]]] = {}
        self.encoded: dict[str, list[tuple[list[int], list[int]]]] = {}

    @property
    def vocab_size(self) -> int:
        """All ids of the tokenizer (the source side's with separate dictionaries)."""
        return self.tokenizer.get_vocab_size()

    @property
    def decoder_start_id(self) -> int:
        """The first decoder input: ``<s>`` (1), or ``</s>`` (2) with fairseq's boundaries."""
        return 2 if self.hp.boundaries == "fairseq" else 1

    @property
    def target_vocab_size(self) -> int:
        """The ids the target side uses: all of them, or with separate dictionaries the
        target dictionary's (the output layer needs no more)."""
        return self.vocab_size if self._target_size is None else self._target_size

    def _read_pairs(self) -> dict[str, list]:
        hp = self.hp
        if hp.corpus == "numbers":
            pairs = number_pairs(hp.seed, (hp.num_train, hp.num_valid, hp.num_test), hp.max_number)
        else:
            pairs = read_parallel(Path(hp.root).expanduser(), hp.src_lang, hp.tgt_lang)
        pairs["train"] = [(s, t) for s, t in pairs["train"] if s and t]
        if not pairs["train"]:
            raise ValueError("the training split has no sentence pairs with both sides non-empty; check "
                             f"the train.{hp.src_lang} and train.{hp.tgt_lang} files under data.root")
        return pairs

    def prepare_data(self) -> None:
        """Read and check the corpus before Lightning creates the run directory, so a bad
        path or file fails with nothing written (``setup`` reuses the pairs)."""
        if not self.pairs:
            self._read = self._read_pairs()

    def setup(self, stage: str | None = None) -> None:
        if self.pairs:
            return
        hp = self.hp
        pairs = getattr(self, "_read", None) or self._read_pairs()
        self._read = None
        self.pairs = pairs
        text = "\n".join(side for pair in pairs["train"] for side in pair)
        self.tokenizer, self._unsaved = run_tokenizer(
            self.trainer, lambda: word_dictionary(pairs["train"], hp.vocab_size, SPECIALS,
                                                  separate=hp.dictionaries == "separate")
            if hp.tokenizer == "word" else train_tokenizer("bpe", text, hp.vocab_size,
                                                           special_tokens=SPECIALS))
        limit, unk = hp.max_tokens_per_sentence, SPECIALS.index("<unk>")
        if hp.dictionaries == "separate":  # target words outside the target dictionary: <unk>
            self._target_size = target_dictionary_size(pairs["train"], hp.vocab_size, SPECIALS)
        size = self._target_size or self.tokenizer.get_vocab_size()
        for split, split_pairs in pairs.items():
            src = [e.ids[:limit] for e in self.tokenizer.encode_batch([s for s, _ in split_pairs])]
            tgt = [[i if i < size else unk for i in e.ids]
                   for e in self.tokenizer.encode_batch([t for _, t in split_pairs])]
            rows = list(zip(src, tgt))
            if split == "train":
                kept = [(s, t) for s, t in rows if len(t) + 1 <= limit]
                if not kept:
                    raise ValueError(f"all {len(rows)} training pairs have targets longer than "
                                     f"max_tokens_per_sentence={limit} tokens; raise "
                                     "data.max_tokens_per_sentence")
                if len(kept) < len(rows):
                    rank_zero_warn(f"{len(rows) - len(kept)} of {len(rows)} training pairs have targets "
                                   f"longer than max_tokens_per_sentence={limit} tokens and are left out")
                rows = kept
            self.encoded[split] = rows

    def collate(self, rows: list[tuple]) -> dict[str, torch.Tensor]:
        """Pad ``(src, tgt[, index])`` rows into ``src`` (+ EOS with fairseq's boundaries),
        ``tgt_in`` (:attr:`decoder_start_id` + tgt), ``tgt_out`` (tgt + EOS) and, for
        evaluation, each row's ``index`` in its split."""
        pad, bos, eos = 0, self.decoder_start_id, 2
        extra = {"index": torch.tensor([r[2] for r in rows])} if len(rows[0]) == 3 else {}
        rows = [(s + [eos] if self.hp.boundaries == "fairseq" else s, t) for s, t, *_ in rows]
        src_len = max(len(s) for s, _ in rows) or 1
        tgt_len = max(len(t) for _, t in rows) + 1
        src = torch.full((len(rows), src_len), pad)
        tgt_in, tgt_out = torch.full((len(rows), tgt_len), pad), torch.full((len(rows), tgt_len), pad)
        for i, (s, t) in enumerate(rows):
            src[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            tgt_in[i, :len(t) + 1] = torch.tensor([bos] + t, dtype=torch.long)
            tgt_out[i, :len(t) + 1] = torch.tensor(t + [eos], dtype=torch.long)
        return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out, **extra}

    def _token_batches(self, rows: list) -> list[list[int]]:
        """Indices grouped by length so that each batch has about ``max_tokens`` tokens."""
        order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]), len(rows[i][1])))
        batches, current, longest = [], [], 0
        src_eos = int(self.hp.boundaries == "fairseq")
        for i in order:
            src, tgt = len(rows[i][0]) + src_eos, len(rows[i][1]) + 1
            size = max(src, tgt) if self.hp.token_count == "max" else src + tgt
            if current and max(longest, size) * (len(current) + 1) > self.hp.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, size)
        return batches + ([current] if current else [])

    def train_dataloader(self) -> DataLoader:
        # Each item is one token batch. The seeded sampler reshuffles the batches every
        # epoch and deals them round-robin to the ranks (equal counts, the rest dropped),
        # so step k on N processes sees batches N·k .. N·k+N-1 of the 1-process order.
        # Being a DistributedSampler, Lightning does not try to re-shard it. Creating the
        # loaders' iterators draws nothing from the global RNG (dropout's), so a resumed
        # run continues the same random stream (mmkit.cli.resume).
        self.save_tokenizer()
        rows = self.encoded["train"]
        batches = _TokenBatches(self._token_batches(rows), rows, self.collate)
        world = rank_and_world(self.trainer)[1]
        sampler = train_sampler(batches, self.trainer, seed=self.hp.seed,
                                drop_last=len(batches) >= world)
        return RNGNeutralLoader(batches, batch_size=None, sampler=sampler)

    def _eval_loader(self, split: str) -> DataLoader:
        self.save_tokenizer()
        rows = [(s, t, i) for i, (s, t) in enumerate(self.encoded[split])]
        return RNGNeutralLoader(rows, batch_size=self.hp.eval_batch_size, collate_fn=self.collate,
                                sampler=ShardSampler(rows, self.trainer))  # unpadded shards

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def references(self, split: str) -> list[str]:
        return [t for _, t in self.pairs[split]]

    def predict_dataloader(self) -> DataLoader:
        self.save_tokenizer()
        if self.hp.predict_file is None:
            lines = [s for s, _ in self.pairs["test"]]
        else:
            lines = read_lines(Path(self.hp.predict_file))
        limit = self.hp.max_tokens_per_sentence
        rows = [(e.ids[:limit], [], i) for i, e in enumerate(self.tokenizer.encode_batch(lines))]
        return DataLoader(rows, batch_size=self.hp.eval_batch_size, collate_fn=self.collate)


class _TokenBatches(Dataset):
    """Pre-built training batches: item ``i`` is the collated batch of ``batches[i]``."""

    def __init__(self, batches: list[list[int]], rows: list, collate) -> None:
        self.batches, self.rows, self.collate = batches, rows, collate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.collate([self.rows[j] for j in self.batches[i]])
