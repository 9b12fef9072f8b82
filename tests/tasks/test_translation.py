"""Translation task: fairseq's label smoothing against a direct fp64 computation, and the
subword-nmt marker removal of fairseq's ``--remove-bpe``."""

import re
from types import SimpleNamespace

import pytest
import torch

from mmkit.models.seq2seq import Seq2SeqTransformer
from mmkit.tasks.translation import Translation, remove_bpe


def batch(vocab: int = 40) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tgt_out = torch.randint(3, vocab, (3, 5))
    tgt_out[1, 3:] = 0  # padding
    return {"src": torch.randint(3, vocab, (3, 6)), "tgt_in": torch.randint(3, vocab, (3, 5)),
            "tgt_out": tgt_out}


def task(style: str, output_normalizer: str = "softmax") -> Translation:
    torch.manual_seed(1)
    net = Seq2SeqTransformer(40, "test", dropout=0.0, output_normalizer=output_normalizer).double()
    return Translation(net, label_smoothing=0.1, label_smoothing_style=style)


def test_fairseq_label_smoothing_equals_fairseqs_formula_in_fp64():
    eps, module, b = 0.1, task("fairseq"), batch()
    loss = module._loss(b, eps)
    logits = module.network(b["src"], b["tgt_in"]).double()
    lprobs = torch.log_softmax(logits, -1)  # [B, T, V]
    vocab, keep = lprobs.shape[-1], b["tgt_out"] != 0
    nll = -lprobs.gather(-1, b["tgt_out"][..., None])[..., 0]
    smooth = -lprobs.sum(-1)
    eps_i = eps / (vocab - 1)  # fairseq: eps over the V - 1 other classes
    expected = (((1 - eps - eps_i) * nll + eps_i * smooth) * keep).sum() / keep.sum()
    assert torch.allclose(loss, expected, atol=1e-10)
    # and it differs from PyTorch's uniform smoothing (eps / V on every class)
    uniform = ((1 - eps) * nll + eps / vocab * smooth)[keep].mean()
    assert torch.allclose(task("uniform")._loss(b, eps), uniform, atol=1e-10)
    assert not torch.allclose(loss, uniform, atol=1e-6)


@pytest.mark.parametrize("output_normalizer", ["sparsemax", "entmax15", "multimax"])
def test_fairseq_label_smoothing_works_with_every_output_loss(output_normalizer):
    """The smoothed target is (1 - eps) on the class and eps/(V-1) elsewhere, for any loss."""
    eps, module, b = 0.1, task("fairseq", output_normalizer), batch()
    logits = module.network(b["src"], b["tgt_in"])
    keep, vocab = b["tgt_out"] != 0, logits.shape[-1]
    target = torch.full(logits.shape, eps / (vocab - 1), dtype=torch.float64)
    target.scatter_(-1, b["tgt_out"][..., None], 1 - eps)
    norm = module.network.output_normalizer
    expected = norm.loss(logits[keep], target[keep])  # a probability target, no smoothing
    assert torch.allclose(module._loss(b, eps), expected, atol=1e-9)


SED = re.compile(r"(@@ )|(@@ ?$)")  # the multi-bleu / prepare-iwslt14 sed expression


@pytest.mark.parametrize("line, expected", [
    ("this is a ho@@ use .", "this is a house ."),  # mid-line
    ("an un@@ be@@ liev@@ able story", "an unbelievable story"),  # several in one word
    ("it ends in a fra@@", "it ends in a fra"),  # "@@" at the end of the line
    ("it ends in a fra@@ ", "it ends in a fra"),  # "@@ " at the end of the line
    ("e-mail: a@@b.com", "e-mail: a@@b.com"),  # "@@" not followed by a space stays
    ("no markers here", "no markers here"),
    ("", ""),
])
def test_remove_bpe_is_fairseqs_and_the_sed_expression(line, expected):
    assert remove_bpe(line) == expected
    assert SED.sub("", line).rstrip() == expected


def test_translate_removes_the_markers_only_when_asked(monkeypatch):
    class Tokenizer:
        def decode_batch(self, ids):
            return ["ein ho@@ us", "fra@@"][:len(ids)]

    for flag, expected in ((True, ["ein hous", "fra"]), (False, ["ein ho@@ us", "fra@@"])):
        module = task("uniform")
        module.hparams.remove_bpe, module.hparams.beam = flag, 1
        monkeypatch.setattr(Translation, "trainer", SimpleNamespace(
            datamodule=SimpleNamespace(tokenizer=Tokenizer())), raising=False)
        src = torch.randint(3, 40, (2, 4))
        assert module.translate(src) == expected


def test_separate_dictionaries_are_checked_against_both_embeddings(monkeypatch):
    def check(target: int, total: int, **net_kw) -> None:
        data = SimpleNamespace(tokenizer=object(), vocab_size=total, target_vocab_size=target)
        monkeypatch.setattr(Translation, "trainer", SimpleNamespace(datamodule=data), raising=False)
        Translation(Seq2SeqTransformer(40, "test", **net_kw)).check_data()

    check(40, 60, share_all_embeddings=False, src_vocab_size=60)  # fits
    with pytest.raises(ValueError, match="target dictionary has 41 tokens but .* vocab_size is 40"):
        check(41, 60, share_all_embeddings=False, src_vocab_size=60)
    with pytest.raises(ValueError, match="source side uses 61 token ids but .* embedding has 60"):
        check(40, 61, share_all_embeddings=False, src_vocab_size=60)
    with pytest.raises(ValueError, match="source embedding has 40; set .*share_all_embeddings=false"):
        check(30, 50)  # a shared embedding is the target's


def test_the_decoder_start_token_of_the_data_must_be_the_networks_bos(monkeypatch):
    data = SimpleNamespace(tokenizer=None, decoder_start_id=2)
    monkeypatch.setattr(Translation, "trainer", SimpleNamespace(datamodule=data), raising=False)
    Translation(Seq2SeqTransformer(40, "test", bos_id=2)).check_data()
    with pytest.raises(ValueError, match="starts the decoder with token id 2 but the network's bos_id is 1"):
        Translation(Seq2SeqTransformer(40, "test")).check_data()


@pytest.mark.parametrize("detokenize", ["none", "moses"])
def test_scores_remove_bpe_then_bleu_is_detokenized_and_bleu_tok_is_tokenized(detokenize, tmp_path,
                                                                              monkeypatch):
    import sacrebleu

    if detokenize == "moses":
        sacremoses = pytest.importorskip("sacremoses")
    refs = ["it &apos;s a ho@@ use , is@@ n &apos;t it ?", "he said &quot; hel@@ lo &quot; ."]
    hyps = ["it &apos;s a house , isn &apos;t it ?", "he says &quot; hello &quot; ."]  # BPE-free
    data = SimpleNamespace(references=lambda split: refs, hparams=SimpleNamespace(tgt_lang="en"))
    monkeypatch.setattr(Translation, "trainer", SimpleNamespace(
        datamodule=data, log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True),
        raising=False)
    module = Translation(Seq2SeqTransformer(40, "test"), remove_bpe=True, detokenize=detokenize)
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    module._outputs = list(enumerate(hyps))
    module._score("test", "test")
    clean = [SED.sub("", r) for r in refs]
    assert (tmp_path / "refs.test.txt").read_text().splitlines() == clean
    tok = sacrebleu.corpus_bleu(hyps, [clean], tokenize="none").score
    assert logged["test/bleu_tok"] == pytest.approx(tok)
    if detokenize == "moses":
        detok = sacremoses.MosesDetokenizer(lang="en")
        plain_hyps = [detok.detokenize(h.split()) for h in hyps]
        plain_refs = [detok.detokenize(r.split()) for r in clean]
        assert plain_refs[0] == "it's a house, isn't it?"
    else:
        plain_hyps, plain_refs = hyps, clean
    assert logged["test/bleu"] == pytest.approx(sacrebleu.corpus_bleu(plain_hyps, [plain_refs]).score)
