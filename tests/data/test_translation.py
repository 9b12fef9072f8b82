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


def test_word_tokenizer_keeps_the_subword_tokens_of_bpe_split_text(tmp_path):
    """tokenizer="word" reads prepare-iwslt14.sh's BPE tokens as they are (one joint
    dictionary, specials first) and decodes back to the same marked text."""
    src = ["das ist ein ho@@ us .", "ein ho@@ us", "das haus"]
    tgt = ["this is a house .", "a house", "the hou@@ se"]
    for split in ("train", "valid", "test"):
        write_pair(tmp_path, split, src, tgt)
    dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en",
                               tokenizer="word", vocab_size=100)
    dm.setup()
    words = {w for line in src + tgt for w in line.split()}
    assert dm.vocab_size == len(words) + 4
    vocab = dm.tokenizer.get_vocab()
    assert [vocab[s] for s in ("<pad>", "<s>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert {w for w in vocab if not w.startswith("<")} == words  # no new splits, no merges
    s, t = dm.encoded["test"][0]
    assert [dm.tokenizer.id_to_token(i) for i in s] == src[0].split()
    assert dm.tokenizer.decode_batch([t for _, t in dm.encoded["test"]]) == tgt
    dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en",
                               tokenizer="word", vocab_size=8)
    with pytest.warns(UserWarning, match=f"has {len(words)} distinct tokens but vocab_size=8 keeps 4"):
        dm.setup()
    assert dm.vocab_size == 8


def test_separate_dictionaries_put_the_target_dictionary_first(tmp_path):
    src = ["das ist ein ho@@ us .", "ein ho@@ us", "das haus"]
    tgt = ["this is a house .", "a house", "the hou@@ se"]
    write_pair(tmp_path, "train", src, tgt)
    for split in ("valid", "test"):  # "haus" is a source token: on the target side it is unknown
        write_pair(tmp_path, split, ["ein haus"], ["a haus ."])
    dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en",
                               tokenizer="word", dictionaries="separate", vocab_size=100)
    dm.setup()
    en = {w for line in tgt for w in line.split()}
    de_only = {w for line in src for w in line.split()} - en
    assert dm.target_vocab_size == 4 + len(en) and dm.vocab_size == 4 + len(en) + len(de_only)
    vocab = dm.tokenizer.get_vocab()
    assert {w for w, i in vocab.items() if 4 <= i < dm.target_vocab_size} == en
    assert {w for w, i in vocab.items() if i >= dm.target_vocab_size} == de_only
    s, t = dm.encoded["test"][0]
    assert [dm.tokenizer.id_to_token(i) for i in s] == ["ein", "haus"]
    assert [dm.tokenizer.id_to_token(i) for i in t] == ["a", "<unk>", "."]
    assert all(i < dm.target_vocab_size for _, t in dm.encoded["train"] for i in t)
    with pytest.raises(ValueError, match="dictionaries='separate' needs tokenizer='word'"):
        TranslationDataModule("parallel", root=str(tmp_path), dictionaries="separate")


def test_fairseq_boundaries_end_sources_with_eos_and_start_the_decoder_from_eos(tmp_path):
    for split in ("train", "valid", "test"):
        write_pair(tmp_path, split, ["ein haus", "das ist ein haus"], ["a house", "this is a house"])
    rows = {}
    for boundaries in ("mmkit", "fairseq"):
        dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en",
                                   tokenizer="word", vocab_size=100, boundaries=boundaries)
        dm.setup()
        rows[boundaries] = next(iter(dm.test_dataloader()))
        assert dm.decoder_start_id == {"mmkit": 1, "fairseq": 2}[boundaries]
    plain, fair = rows["mmkit"], rows["fairseq"]
    lengths = (plain["src"] != 0).sum(1)
    for i, n in enumerate(lengths.tolist()):  # the same tokens, then </s>
        assert torch.equal(fair["src"][i, :n], plain["src"][i, :n]) and int(fair["src"][i, n]) == 2
    assert (fair["tgt_in"][:, 0] == 2).all() and (plain["tgt_in"][:, 0] == 1).all()
    assert torch.equal(fair["tgt_in"][:, 1:], plain["tgt_in"][:, 1:])
    assert torch.equal(fair["tgt_out"], plain["tgt_out"])


def test_token_count_max_batches_like_fairseqs_max_tokens(tmp_path):
    src = [" ".join(["w"] * (1 + i % 7)) for i in range(60)]
    tgt = [" ".join(["v"] * (1 + i % 5)) for i in range(60)]
    for split in ("train", "valid", "test"):
        write_pair(tmp_path, split, src, tgt)
    counts = {}
    for count in ("sum", "max"):
        dm = TranslationDataModule("parallel", root=str(tmp_path), src_lang="de", tgt_lang="en",
                                   tokenizer="word", vocab_size=100, max_tokens=48, token_count=count,
                                   boundaries="fairseq")
        dm.setup()
        batches = list(dm.train_dataloader())
        counts[count] = len(batches)
        for b in batches:  # the padded batch: sentences x its longest pair, as counted
            src_len, tgt_len = (b["src"] != 0).sum(1), (b["tgt_out"] != 0).sum(1)  # both with EOS
            per_pair = torch.maximum(src_len, tgt_len) if count == "max" else src_len + tgt_len
            assert len(per_pair) == 1 or int(per_pair.max()) * len(per_pair) <= 48
    assert counts["max"] < counts["sum"]
