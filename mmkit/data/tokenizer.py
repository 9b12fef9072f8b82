"""Tokenizers (HF ``tokenizers``), trained on the training split only.

- ``bpe``: byte-level BPE of at most ``vocab_size`` tokens; newlines are kept as tokens.
- ``word``: a word-level vocabulary (whitespace split) with ``<unk>`` and an ``<eos>``
  at every line end, as in the WikiText/Transformer-XL literature.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TokenizerKind = Literal["bpe", "word"]
EOS, UNK = "<eos>", "<unk>"


def train_tokenizer(kind: TokenizerKind, text: str, vocab_size: int,
                    special_tokens: list[str] | None = None) -> Tokenizer:
    """Train on ``text``; ``special_tokens`` (BPE only) get the first ids, in order."""
    lines = text.splitlines(keepends=True)
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      special_tokens=special_tokens or [],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="\0")  # joins words with spaces
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, show_progress=False,
                                            special_tokens=[UNK, EOS])
    else:
        raise ValueError(f"unknown tokenizer {kind!r}; choose bpe or word")
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return tok


def encode(tok: Tokenizer, text: str) -> torch.Tensor:
    """The whole text as one stream of ids ``[N]`` (word level: ``<eos>`` per line)."""
    eos = tok.token_to_id(EOS)
    lines = text.splitlines(keepends=eos is None)
    ids: list[int] = []
    for enc in tok.encode_batch(lines):
        ids.extend(enc.ids)
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def load_tokenizer(path: str, what: str = "tokenizer_path {path}",
                   hint: str = "pass the tokenizer.json saved in the run directory") -> Tokenizer:
    """``Tokenizer.from_file(path)``, with one-line errors for a missing or invalid file
    (``what`` names the file in the message, ``hint`` says what to do)."""
    name = what.format(path=path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{name} does not exist; {hint}")
    try:
        return Tokenizer.from_file(path)
    except Exception as err:  # tokenizers raises a bare Exception for bad JSON
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise ValueError(f"{name} is not a tokenizers JSON file ({reason}); {hint}") from None


def run_tokenizer(trainer: Any, train: Callable[[], Tokenizer],
                  path: str | None = None) -> tuple[Tokenizer, Path | None]:
    """The run's tokenizer and where it still has to be saved: ``path`` when given; else
    ``tokenizer.json`` in the trainer's run directory when it exists (a resumed run); else
    ``train()``, to be saved there by rank 0 (:meth:`TokenizerState.save_tokenizer`, once the
    run's checks have passed, so a refused run writes nothing)."""
    if path is not None:
        return load_tokenizer(path), None
    log_dir = trainer.log_dir if trainer is not None else None
    saved = Path(log_dir) / "tokenizer.json" if log_dir else None
    if saved is not None and saved.is_file():
        return load_tokenizer(str(saved), what="the run's {path}",
                              hint="it is damaged: restore it, or pass a good copy as data.tokenizer_path"
                              ), None
    tok = train()
    return tok, saved if saved is not None and trainer.is_global_zero else None


class TokenizerState:
    """A DataModule mixin: checkpoints carry the tokenizer (``self.tokenizer``), and loading a
    checkpoint whose tokenizer differs from this run's is refused (token ids would mean
    other words)."""

    tokenizer: Tokenizer | None
    tokenizer_hint = "pass the run's tokenizer.json as data.tokenizer_path"
    _unsaved: Path | None = None  # where a newly trained tokenizer still has to be saved

    def save_tokenizer(self) -> None:
        """Save a newly trained tokenizer as the run's ``tokenizer.json`` (once). The loaders
        call this: it runs after every setup check, so a refused run leaves no file behind."""
        if self._unsaved is not None and self.tokenizer is not None:
            self._unsaved.parent.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(str(self._unsaved))
        self._unsaved = None

    def state_dict(self) -> dict:
        return {"tokenizer": self.tokenizer.to_str() if self.tokenizer else None}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("tokenizer")
        if saved and self.tokenizer is not None and saved != self.tokenizer.to_str():
            raise ValueError("the checkpoint was trained with a different tokenizer than this "
                             f"run's; {self.tokenizer_hint}")
