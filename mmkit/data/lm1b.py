"""The One Billion Word benchmark (Chelba et al. 2013) in the original Transformer-XL's layout.

``data.root`` is the directory the original's ``getdata.sh`` fills (its ``one-billion-words/``)::

    root/
      1-billion-word-language-modeling-benchmark-r13output/
        training-monolingual.tokenized.shuffled/news.en-00001-of-00100 ... (training, 99 files)
      valid.txt        heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050
      test.txt         the same file (the original evaluates on it for both)
      1b_word_vocab.txt  one ``word count`` line per word; the ids are the line numbers

- **Vocabulary.** The fixed vocabulary of ``1b_word_vocab.txt``, as the original (its
  ``<S>`` ends every sentence, ``<UNK>`` replaces unknown words). mmkit's word-level
  tokenizer calls them ``<eos>`` and ``<unk>``; the ids stay the file's line numbers.
- **Stream.** One sentence per line, each followed by ``<S>``, in file order (files sorted
  by name). The original shuffles files and sentences every epoch and starts every
  sentence with a ``<S>`` too; in one stream the two give the same tokens and targets
  (the closing ``<S>`` of one sentence is the opening one of the next).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from .corpora import _read
from .tokenizer import EOS, UNK

TRAIN_DIR = "1-billion-word-language-modeling-benchmark-r13output/training-monolingual.tokenized.shuffled"
VOCAB_FILE = "1b_word_vocab.txt"
RENAMED = {"<S>": EOS, "<UNK>": UNK}  # the original's markers -> mmkit's word-level ones


def lm1b_files(root: str) -> tuple[list[Path], dict[str, Path], Path]:
    """``(training files, {"valid": .., "test": ..}, vocabulary file)``; ``FileNotFoundError``
    naming everything that is missing."""
    base = Path(root).expanduser()
    train = sorted((base / TRAIN_DIR).glob("news.en-*"))
    evals = {split: base / f"{split}.txt" for split in ("valid", "test")}
    vocab = base / VOCAB_FILE
    missing = [str(p) for p in (*evals.values(), vocab) if not p.is_file()]
    if not train:
        missing.insert(0, str(base / TRAIN_DIR / "news.en-*"))
    if missing:
        raise FileNotFoundError(
            f"One Billion Word files missing: {', '.join(missing)}; data.root must hold "
            f"{TRAIN_DIR}/news.en-*, valid.txt, test.txt and {VOCAB_FILE} (the layout of the original "
            "Transformer-XL's getdata.sh)")
    return train, evals, vocab


def lm1b_tokenizer(vocab_file: Path) -> Tokenizer:
    """A word-level tokenizer with the fixed vocabulary of ``vocab_file`` (ids = line numbers
    of the first occurrences; ``<S>``/``<UNK>`` renamed ``<eos>``/``<unk>``)."""
    vocab: dict[str, int] = {}
    for line in vocab_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            vocab.setdefault(RENAMED.get(line.split()[0], line.split()[0]), len(vocab))
    if UNK not in vocab or EOS not in vocab:
        raise ValueError(f"{vocab_file} has no <S> or no <UNK> line; use the benchmark's 1b_word_vocab.txt")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="\0")  # joins words with spaces
    return tok


def load_lm1b(root: str | None, max_chars: int | None = None) -> tuple[dict[str, str], Path]:
    """``({"train", "valid", "test"}: text, vocabulary file)``; with ``max_chars`` the
    training files are read only until that many characters (quick runs, tests)."""
    if root is None:
        raise ValueError("corpus 'lm1b' needs data.root (the directory of the original's getdata.sh)")
    train_files, evals, vocab = lm1b_files(root)
    parts: list[str] = []
    size = 0
    for path in train_files:
        if max_chars is not None and size >= max_chars:
            break
        parts.append(_read(path).rstrip("\n"))
        size += len(parts[-1]) + 1
    texts = {"train": "\n".join(parts), **{split: _read(path) for split, path in evals.items()}}
    return texts, vocab
