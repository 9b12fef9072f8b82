"""Text corpora for language modeling, each as ``{"train": str, "valid": str, "test": str}``.

- ``kjv`` (embedded): the King James Bible, one verse per line (4.1M characters), shipped
  in the package (``mmkit/data/embedded/kjv.txt.xz``, 0.9 MB).
- ``pydoc`` (always present): the stdlib's ``pydoc_data.topics`` (465k characters).
- ``wikitext``: ``wiki.{train,valid,test}.tokens`` under ``root`` (WikiText-103/-2).
- ``text``: any plain UTF-8 files: ``root`` holds ``train.txt``/``valid.txt``/``test.txt``,
  or is one file that is split by lines.

Single-source corpora are split contiguously by lines: the first ``1 - 2f`` for
training, then ``f`` for validation and ``f`` for testing.
"""

from __future__ import annotations

import lzma
from pathlib import Path
from typing import Literal

Corpus = Literal["kjv", "pydoc", "wikitext", "text"]
SPLITS = ("train", "valid", "test")


def kjv_text() -> str:
    """The embedded King James Bible, one verse per line."""
    path = Path(__file__).parent / "embedded" / "kjv.txt.xz"
    if not path.is_file():
        raise FileNotFoundError(f"the embedded King James Bible ({path}) is missing from this installation "
                                "of mmkit; reinstall it (`pip install --force-reinstall mmkit`)")
    return lzma.decompress(path.read_bytes()).decode("utf-8")


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def split_lines(text: str, fraction: float) -> dict[str, str]:
    """Contiguous train/valid/test split at line boundaries."""
    lines = text.splitlines()
    n_eval = int(len(lines) * fraction)
    cut = len(lines) - 2 * n_eval
    parts = (lines[:cut], lines[cut:cut + n_eval], lines[cut + n_eval:])
    return {split: "\n".join(part) for split, part in zip(SPLITS, parts)}


def _read(path: Path) -> str:
    """The file as text, or one clear ``ValueError`` when it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); convert it "
                         "to UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
    except OSError as err:  # permissions, a directory, an I/O error
        raise ValueError(f"cannot read {path} ({err.strerror or type(err).__name__}); check that it is a "
                         "readable text file") from None


def load_corpus(corpus: Corpus, root: str | None, eval_fraction: float) -> dict[str, str]:
    if corpus == "kjv":
        return split_lines(kjv_text(), eval_fraction)
    if corpus == "pydoc":
        return split_lines(pydoc_text(), eval_fraction)
    if root is None:
        raise ValueError(f"corpus {corpus!r} needs data.root")
    base = Path(root).expanduser()
    if corpus == "wikitext":
        files = {s: base / f"wiki.{s}.tokens" for s in SPLITS}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"WikiText files missing: {', '.join(missing)}; data.root must hold "
                "wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens")
        return {s: _read(p) for s, p in files.items()}
    if corpus == "text":
        if base.exists() and not base.is_dir():
            return split_lines(_read(base), eval_fraction)
        files = {s: base / f"{s}.txt" for s in SPLITS}
        if not all(p.exists() for p in files.values()):
            raise FileNotFoundError(f"text corpus not found: data.root={base} must be a text file "
                                    "or a directory with train.txt, valid.txt and test.txt")
        return {s: _read(p) for s, p in files.items()}
    raise ValueError(f"unknown corpus {corpus!r}; choose kjv, pydoc, wikitext or text")
