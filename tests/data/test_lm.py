"""TextDataModule: consecutive stream windows, corpora, tokenizers and clear errors."""

import pytest
import torch

from mmkit.data import TextDataModule
from mmkit.data.corpora import load_corpus
from mmkit.data.lm import StreamWindows, encode_in_chunks
from mmkit.data.lm1b import TRAIN_DIR
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
    (dict(eval_tgt_len=0), "eval_tgt_len must be positive"),
    (dict(eval_fraction=0.6), "eval_fraction"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TextDataModule(**kwargs)


def test_evaluation_windows_use_eval_tgt_len_and_score_every_target_once():
    dm = TextDataModule("pydoc", vocab_size=300, batch_size=4, eval_batch_size=3, tgt_len=16,
                        eval_tgt_len=5, max_chars=6000)
    dm.setup()
    train = [x.shape[1] for x, _ in dm.train_dataloader()]
    assert set(train[:-1]) == {16} and 1 <= train[-1] <= 16
    for loader, split in ((dm.val_dataloader(), "valid"), (dm.test_dataloader(), "test")):
        windows = list(loader)
        length = dm.ids[split].numel() // 3
        streams = dm.ids[split][:3 * length].view(3, length)  # [streams, L], built here directly
        assert all(x.shape[1] == 5 for x, _ in windows[:-1]) and 1 <= windows[-1][0].shape[1] <= 5
        assert torch.equal(torch.cat([y for _, y in windows], 1), streams[:, 1:])  # each target once
        assert torch.equal(torch.cat([x for x, _ in windows], 1), streams[:, :-1])
    assert TextDataModule("pydoc", tgt_len=12).eval_tgt_len == 12  # default: the training length


def test_chunked_encoding_equals_one_pass():
    text = load_corpus("pydoc", None, 0.05)["valid"][:20000]
    for kind in ("bpe", "word"):
        tok = train_tokenizer(kind, text, 300)
        assert torch.equal(encode_in_chunks(tok, text, lines=7), encode(tok, text))


def _lm1b(root, vocab="<S> 0\n</S> 0\n<UNK> 0\nthe 9\ncat 5\nsat 4\non 3\nmat 2\na 1\n"):
    train = root / TRAIN_DIR
    train.mkdir(parents=True)
    (train / "news.en-00002-of-00100").write_text("a cat sat\nthe mat\n")
    (train / "news.en-00001-of-00100").write_text("the cat sat on the mat\n")
    (root / "valid.txt").write_text("the dog sat\n")
    (root / "test.txt").write_text("a cat\n")
    (root / "1b_word_vocab.txt").write_text(vocab)


def test_lm1b_layout_and_fixed_vocabulary(tmp_path):
    _lm1b(tmp_path)
    dm = TextDataModule("lm1b", root=str(tmp_path), tokenizer="word", vocab_size=10)
    dm.setup()
    words = "<S> </S> <UNK> the cat sat on mat a".split()  # ids: the vocabulary file's line numbers
    ids = {w: i for i, w in enumerate(words)}
    sentences = ["the cat sat on the mat", "a cat sat", "the mat"]  # files in name order
    want = [ids[w] for s in sentences for w in (*s.split(), "<S>")]
    assert dm.ids["train"].tolist() == want and dm.vocab_size == 9
    assert dm.ids["valid"].tolist() == [ids["the"], ids["<UNK>"], ids["sat"], ids["<S>"]]
    assert dm.ids["test"].tolist() == [ids["a"], ids["cat"], ids["<S>"]]


def test_lm1b_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"training-monolingual.*valid\.txt.*1b_word_vocab\.txt"):
        TextDataModule("lm1b", root=str(tmp_path), tokenizer="word").setup()
    with pytest.raises(ValueError, match="set data.tokenizer to word"):
        TextDataModule("lm1b", root=str(tmp_path), tokenizer="bpe")
    _lm1b(tmp_path, vocab="the 3\ncat 2\n")
    with pytest.raises(ValueError, match="no <S> or no <UNK>"):
        TextDataModule("lm1b", root=str(tmp_path), tokenizer="word").setup()
