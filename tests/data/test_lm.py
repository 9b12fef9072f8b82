"""TextDataModule: consecutive stream windows, corpora, tokenizers and clear errors."""

import pytest
import torch

from mmkit.data import TextDataModule
from mmkit.data.corpora import load_corpus
from mmkit.data.lm import StreamWindows
from mmkit.data.tokenizer import encode, train_tokenizer


def test_windows_walk_the_streams_in_order_with_shifted_targets():
    streams = torch.arange(2 * 11).view(2, 11)
    windows = list(StreamWindows(streams, tgt_len=4))
    assert len(windows) == len(StreamWindows(streams, 4)) == 3
    inputs = torch.cat([x for x, _ in windows], dim=1)
    targets = torch.cat([y for _, y in windows], dim=1)
    assert torch.equal(inputs, streams[:, :-1]) and torch.equal(targets, streams[:, 1:])


def test_pydoc_corpus_tokenizes_and_streams():
    dm = TextDataModule("pydoc", vocab_size=300, batch_size=4, eval_batch_size=2, tgt_len=16,
                        max_chars=20000)
    dm.setup()
    assert dm.vocab_size <= 300 and set(dm.ids) == {"train", "valid", "test"}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert 1.0 < dm.bytes_per_token["valid"] < 8.0
    assert dm.tokenizer.decode(dm.ids["train"][:50].tolist()) in load_corpus("pydoc", None, 0.05)["train"]


def test_word_level_tokenizer_adds_eos_per_line():
    tok = train_tokenizer("word", "a b c\nb c d\n", 100)
    ids = encode(tok, "a b\nd x\n")
    eos, unk = tok.token_to_id("<eos>"), tok.token_to_id("<unk>")
    assert ids.tolist()[2] == eos and ids.tolist()[-1] == eos and unk in ids.tolist()


def test_kjv_is_embedded():
    texts = load_corpus("kjv", None, 0.05)
    assert texts["train"].startswith("In the beginning God created the heaven and the earth.")
    assert len(texts["train"]) > 3_000_000


def test_missing_wikitext_names_the_expected_files(tmp_path):
    (tmp_path / "wiki.train.tokens").write_text("a b c\n")
    with pytest.raises(FileNotFoundError, match=r"wiki\.valid\.tokens.*wiki\.test\.tokens"):
        TextDataModule("wikitext", root=str(tmp_path)).setup()


def test_empty_corpus_is_a_clear_error(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text("some words here\n" if split != "train" else "\n\n")
    with pytest.raises(ValueError, match=r"the train split of corpus 'text' \(data.root=.*\) is empty"):
        TextDataModule("text", root=str(tmp_path)).setup()


def test_corpus_smaller_than_one_segment_is_a_clear_error(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text("just a few words of text\n")
    dm = TextDataModule("text", root=str(tmp_path), vocab_size=300, batch_size=2, tgt_len=64)
    dm.setup()
    with pytest.raises(ValueError, match="less than one segment"):
        dm.train_dataloader()


def test_non_utf8_text_is_a_clear_error(tmp_path):
    (tmp_path / "corpus.txt").write_bytes(b"caf\xe9\n" * 10)
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        TextDataModule("text", root=str(tmp_path / "corpus.txt")).setup()


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(tgt_len=-1), "tgt_len must be positive"),
    (dict(eval_fraction=0.6), "eval_fraction"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextDataModule(**kwargs)
