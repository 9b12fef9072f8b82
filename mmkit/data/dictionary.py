"""Word-level dictionaries for parallel text that is already split into subwords.

fairseq-preprocess turns ``prepare-iwslt14.sh``'s BPE-split files into dictionaries of their
space-separated tokens, one per language (or one joint one with ``--joined-dictionary``),
most frequent first, after the specials. :func:`word_dictionary` builds the same as one
``tokenizers`` word-level tokenizer:

- ``separate=False``: one joint dictionary of both sides' tokens;
- ``separate=True``: the target side's dictionary gets the first ids (specials, then the
  target tokens), and the source tokens that are not target tokens follow. The output layer
  then needs only the target ids (:func:`target_vocab_size`), exactly like fairseq's target
  dictionary; the encoder gets its own embedding over all ids
  (``Seq2SeqTransformer(share_all_embeddings=False, src_vocab_size=...)``). A token found on
  both sides shares an id, but since the two embeddings are separate this is just indexing.

Decoding joins tokens with single spaces, so the ``@@ `` markers come back intact for the
task's ``remove_bpe``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from lightning.pytorch.utilities import rank_zero_warn
from tokenizers import Tokenizer, decoders, models, pre_tokenizers


def _ranked(counts: Counter, keep: int, side: str, vocab_size: int, specials: list[str]) -> list[str]:
    """The ``keep`` most frequent tokens (ties alphabetical, so the order is deterministic)."""
    tokens = sorted((t for t in counts if t not in specials), key=lambda t: (-counts[t], t))
    if len(tokens) > keep:
        rank_zero_warn(f"the training {side} has {len(tokens)} distinct tokens but vocab_size={vocab_size} "
                       f"keeps {keep} (plus {len(specials)} specials); the rest read as <unk>; raise "
                       "data.vocab_size (and the network's)")
    return tokens[:keep]


def target_dictionary_size(pairs: Iterable[tuple[str, str]], vocab_size: int,
                           specials: list[str]) -> int:
    """How many ids :func:`word_dictionary` with ``separate=True`` gives the target side."""
    types = {t for _, tgt in pairs for t in tgt.split()} - set(specials)
    return len(specials) + min(len(types), vocab_size - len(specials))


def word_dictionary(pairs: Iterable[tuple[str, str]], vocab_size: int, specials: list[str],
                    separate: bool = False, unk: str = "<unk>") -> Tokenizer:
    """A word-level tokenizer over the space-separated tokens of the training ``pairs``
    (``(source, target)`` lines): ``specials`` first, then at most ``vocab_size - len(specials)``
    tokens of the joint text, or, with ``separate``, of the target side and then of the source
    side (each capped at that number)."""
    src_counts, tgt_counts = Counter(), Counter()
    for src, tgt in pairs:
        src_counts.update(src.split())
        tgt_counts.update(tgt.split())
    keep = vocab_size - len(specials)
    if separate:
        tokens = _ranked(tgt_counts, keep, "target side", vocab_size, specials)
        known = set(tokens)
        tokens += [t for t in _ranked(src_counts, keep, "source side", vocab_size, specials)
                   if t not in known]
    else:
        tokens = _ranked(src_counts + tgt_counts, keep, "text", vocab_size, specials)
    vocab = {token: i for i, token in enumerate([*specials, *tokens])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # joins the tokens with single spaces (cleanup off: "house ." must not become "house.")
    tok.decoder = decoders.WordPiece(prefix="\0", cleanup=False)
    tok.add_special_tokens(specials)
    return tok


__all__ = ["word_dictionary", "target_dictionary_size"]
