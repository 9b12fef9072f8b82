"""Seq2seq Transformer: cached = full decoding for every normalizer, beam 1 = greedy,
cross-attention really uses the normalizer, padding never changes real tokens."""

import pytest
import torch

from mmkit.models.search import beam_search, greedy_decode
from mmkit.models.seq2seq import Seq2SeqTransformer

from ..normalizers.conftest import HEADED, VARIANTS, as_spec

ALL = VARIANTS + HEADED


def model(normalizer="softmax", per_head=False, **kw):
    kw.setdefault("heads", 3 if per_head else 2)
    kw.setdefault("d_model", 24)
    return Seq2SeqTransformer(40, "test", normalizer=normalizer, per_head=per_head, dropout=0.0,
                              **kw).double().eval()


@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_incremental_decoding_equals_full_decoding(variant):
    normalizer, per_head = as_spec(variant)
    net = model(normalizer, per_head)
    src = torch.randint(3, 40, (2, 7))
    src[1, 5:] = net.pad_id
    tgt = torch.randint(3, 40, (2, 6))
    full = net(src, tgt)
    memory, mask = net.encode(src)
    caches = net.new_caches()
    steps = [net.decode(tgt[:, t:t + 1], memory, mask, caches, start=t) for t in range(6)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-10)


def test_beam_one_equals_greedy_and_beams_are_valid():
    torch.manual_seed(1)
    net = model("multimax", output_normalizer="multimax")
    src = torch.randint(3, 40, (3, 6))
    src[2, 4:] = net.pad_id
    greedy = greedy_decode(net, src, max_len_a=1.0, max_len_b=3)
    assert beam_search(net, src, beam=1, max_len_a=1.0, max_len_b=3) == greedy
    beams = beam_search(net, src, beam=4, max_len_a=1.0, max_len_b=3)
    assert len(beams) == 3 and all(len(h) <= 9 and net.eos_id not in h for h in beams)


def test_beam_search_finds_a_better_scoring_sequence_than_greedy_or_equal():
    torch.manual_seed(2)
    net = model()
    src = torch.randint(3, 40, (2, 5))

    def score(hyp, b):
        tgt = torch.tensor([[net.bos_id] + hyp])
        logp = net.log_probs(net(src[b:b + 1], tgt))[0]
        out = torch.tensor(hyp + [net.eos_id])
        return logp.gather(-1, out[:, None]).sum().item() / len(out)

    greedy = greedy_decode(net, src, max_len_a=1.0, max_len_b=2)
    beams = beam_search(net, src, beam=5, max_len_a=1.0, max_len_b=2)
    for b in range(2):
        assert score(beams[b], b) >= score(greedy[b], b) - 1e-9


def test_cross_attention_uses_the_configured_normalizer(monkeypatch):
    """Spy on every normalizer call: cross-attention, in full and cached decoding,
    goes through the configured (non-softmax) normalizer."""
    net = model("sparsemax")
    calls = []
    for layer in net.decoder:
        norm = layer.cross_attn.normalizer
        original = norm.forward
        monkeypatch.setattr(norm, "forward", lambda *a, _o=original, **k: calls.append(1) or _o(*a, **k))
    src, tgt = torch.randint(3, 40, (2, 5)), torch.randint(3, 40, (2, 4))
    net(src, tgt)
    assert len(calls) == 2
    memory, mask = net.encode(src)
    caches = net.new_caches()
    net.decode(tgt[:, :1], memory, mask, caches)
    net.decode(tgt[:, 1:2], memory, mask, caches, start=1)
    assert len(calls) == 6
    assert type(net.decoder[0].cross_attn.normalizer).__name__ == "SparseMax"


def test_padding_never_changes_real_tokens():
    net = model("entmax15")
    src, tgt = torch.randint(3, 40, (1, 5)), torch.randint(3, 40, (1, 4))
    padded = torch.cat([src, torch.full((1, 3), net.pad_id)], 1)
    assert torch.allclose(net(src, tgt), net(padded, tgt), atol=1e-10)
