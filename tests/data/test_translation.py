"""TranslationDataModule: deterministic number pairs, parallel files, batching, errors."""

import pytest
import torch

from mmkit.data import TranslationDataModule
from mmkit.data.translation import number_pairs


def test_number_pairs_are_seeded_and_splits_use_disjoint_numbers():
    a, b = number_pairs(0, (50, 20, 20), 1000), number_pairs(0, (50, 20, 20), 1000)
    assert a == b and a != number_pairs(1, (50, 20, 20), 1000)
    words = {split: {w for s, _ in pairs for w in s.split(" ; ")} for split, pairs in a.items()}
    assert not words["train"] & words["test"] and not words["valid"] & words["test"]
    src, tgt = a["train"][0]
    assert len(src.split(" ; ")) == len(tgt.split(" ; ")) in range(2, 6)


def write_pair(root, split, src_lines, tgt_lines, src="de", tgt="en"):
    (root / f"{split}.{src}").write_text("\n".join(src_lines) + "\n")
    (root / f"{split}.{tgt}").write_text("\n".join(tgt_lines) + "\n")


def test_parallel_files_batches_and_empty_lines(tmp_path):
    lines = [f"das ist satz {i}" for i in range(30)]
    write_pair(tmp_path, "train", lines + [""], [f"this is sentence {i}" for i in range(30)] + ["x"])
    for split in ("valid", "test"):
        write_pair(tmp_path, split, ["ein satz", ""], ["a sentence", "empty source"])
    dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en",
                               vocab_size=300, max_tokens=64, eval_batch_size=4)
    dm.setup()
    assert len(dm.encoded["train"]) == 30  # the pair with an empty side is dropped
    assert dm.references("test") == ["a sentence", "empty source"]  # kept, aligned
    batches = list(dm.train_dataloader())
    assert sum(b["src"].shape[0] for b in batches) == 30
    for b in batches:
        assert b["src"].numel() + b["tgt_in"].numel() <= 64 + b["src"].shape[0] * 2
        n = int((b["tgt_out"][0] != 0).sum())  # target + EOS
        assert torch.equal(b["tgt_in"][0, 1:n], b["tgt_out"][0, :n - 1])
        assert int(b["tgt_out"][0, n - 1]) == 2  # EOS
    assert (batches[0]["tgt_in"][:, 0] == 1).all()  # BOS
    assert next(iter(dm.test_dataloader()))["index"].tolist() == [0, 1]


def test_mismatched_parallel_files_name_both_files_and_counts(tmp_path):
    write_pair(tmp_path, "train", ["a", "b", "c"], ["x", "y"])
    with pytest.raises(ValueError, match=r"train\.de has 3 lines, .*train\.en has 2"):
        TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en").setup()


def test_unknown_language_pair_is_a_clear_error(tmp_path):
    write_pair(tmp_path, "train", ["a"], ["x"])
    with pytest.raises(FileNotFoundError, match=r"language pair fr-en; .* holds train\.de, train\.en"):
        TranslationDataModule("parallel", root=str(tmp_path), src_lang="fr", tgt_lang="en").setup()


def test_over_long_training_pairs_are_dropped(tmp_path):
    write_pair(tmp_path, "train", ["kurz", "sehr " * 50], ["short", "very " * 50])
    for split in ("valid", "test"):
        write_pair(tmp_path, split, ["kurz"], ["short"])
    dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en",
                               vocab_size=300, max_tokens_per_sentence=20)
    dm.setup()
    assert len(dm.encoded["train"]) == 1


def test_lines_split_at_newlines_only(tmp_path):
    """A form feed, a lone carriage return or U+2028 inside a line does not shift the alignment."""
    src = ["eins", "zwei\x0cdrei", "vier\u2028fünf", "sechs\rsieben", "acht"]
    tgt = ["one", "two three", "four five", "six seven", "eight"]
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.de").write_bytes(("\n".join(src) + "\r\n").encode())  # CRLF at the end too
        (tmp_path / f"{split}.en").write_text("\n".join(tgt) + "\n")
    dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en", vocab_size=300)
    dm.setup()
    assert dm.references("test") == tgt
    assert [s for s, _ in dm.pairs["test"]][1:4] == ["zwei\x0cdrei", "vier\u2028fünf", "sechs\rsieben"]


def test_training_pairs_over_the_length_limit_are_counted_or_refused(tmp_path):
    long = " ".join(f"w{i}" for i in range(40))
    write_pair(tmp_path, "train", ["kurz", "lang"], ["short", long])
    for split in ("valid", "test"):
        write_pair(tmp_path, split, ["kurz"], ["short"])
    dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en", vocab_size=300,
                               max_tokens_per_sentence=8)
    with pytest.warns(UserWarning, match="1 of 2 training pairs have targets longer than"):
        dm.setup()
    assert len(dm.encoded["train"]) == 1
    write_pair(tmp_path, "train", ["lang"], [long])
    dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en", vocab_size=300,
                               max_tokens_per_sentence=8)
    with pytest.raises(ValueError, match="all 1 training pairs have targets longer than"):
        dm.setup()
