"""The translator's corpora: embedded number sentences (en→de) and line-aligned files.

- :func:`number_pairs`: sentences of 2-5 integers written out by ``num2words``, seeded, with
  disjoint number pools for train, valid and test;
- :func:`read_lines`: a file's lines, split at newlines only;
- :func:`read_parallel`: ``<root>/{train,valid,test}.{src_lang}`` and ``.{tgt_lang}`` (the
  layout of fairseq's ``prepare-iwslt14.sh`` output), checked line for line.
"""

from __future__ import annotations

import random
from pathlib import Path

SPLITS = ("train", "valid", "test")


def number_pairs(seed: int, sizes: tuple[int, int, int], max_number: int) -> dict[str, list]:
    """Sentences of 2-5 numbers joined by " ; ", in English and German. The numbers
    below ``max_number`` are shuffled and cut 80/10/10 into train/valid/test pools,
    so no number of the valid or test sentences was seen in training."""
    from num2words import num2words

    if max_number < 30:
        raise ValueError(f"max_number must be at least 30, got {max_number}")
    numbers = list(range(max_number))
    random.Random(seed).shuffle(numbers)
    cut1, cut2 = int(0.8 * max_number), int(0.9 * max_number)
    pools = dict(zip(SPLITS, (numbers[:cut1], numbers[cut1:cut2], numbers[cut2:])))
    words: dict[int, tuple[str, str]] = {}  # each number is written out once, not once per use

    def written(n: int) -> tuple[str, str]:
        if n not in words:
            words[n] = (num2words(n), num2words(n, lang="de"))
        return words[n]

    out = {}
    for k, (split, size) in enumerate(zip(SPLITS, sizes)):
        rng = random.Random(seed * 1000 + k + 1)
        sentences = [[written(n) for n in rng.choices(pools[split], k=rng.randint(2, 5))]
                     for _ in range(size)]
        out[split] = [(" ; ".join(en for en, _ in nums), " ; ".join(de for _, de in nums))
                      for nums in sentences]
    return out


def read_parallel(root: Path, src_lang: str, tgt_lang: str) -> dict[str, list]:
    out = {}
    for split in SPLITS:
        src, tgt = root / f"{split}.{src_lang}", root / f"{split}.{tgt_lang}"
        for path in (src, tgt):
            if not path.is_file():
                found = sorted(p.name for p in root.glob(f"{split}.*")) if root.is_dir() else []
                raise FileNotFoundError(
                    f"missing {path} for the language pair {src_lang}-{tgt_lang}; "
                    f"{root} holds {', '.join(found) or 'no ' + split + '.* files'}")
        src_lines, tgt_lines = (read_lines(p) for p in (src, tgt))
        if len(src_lines) != len(tgt_lines):
            raise ValueError(f"parallel files differ in length: {src} has {len(src_lines)} lines, "
                             f"{tgt} has {len(tgt_lines)}; they must be line-aligned (line i of one "
                             "translates line i of the other)")
        out[split] = list(zip(src_lines, tgt_lines))
    return out


def read_lines(path: Path) -> list[str]:
    """The file's lines, split at newlines only (as `wc -l` and fairseq count them): a form
    feed, a lone carriage return or U+2028 inside a line must not shift the alignment."""
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the file
        return [line.strip() for line in lines]
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); convert it "
                         "to UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None
