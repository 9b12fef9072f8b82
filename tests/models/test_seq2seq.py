"""Seq2seq Transformer: cached = full decoding for every normalizer, the official placement,
beam 1 = greedy, cross-attention really uses the normalizer, padding never changes real
tokens, fairseq's positions, activation and init."""

import copy
import inspect
import math

import pytest
import torch
from torch import nn

from mmkit.models.search import beam_search, greedy_decode
from mmkit.models.seq2seq import Seq2SeqTransformer
from mmkit.nn import MultiHeadAttention, attention
from mmkit.nn.positions import fairseq_sinusoid
from mmkit.normalizers import Normalizer, SoftMax

from ..normalizers.conftest import HEADED, VARIANTS, as_spec

ALL = VARIANTS + HEADED


def model(normalizer="softmax", per_head=False, **kw):
    kw.setdefault("heads", 3 if per_head else 2)
    kw.setdefault("d_model", 24)
    return Seq2SeqTransformer(40, "test", normalizer=normalizer, per_head=per_head, dropout=0.0,
                              **kw).double().eval()


def cached_decode(net, src, tgt):
    memory, mask = net.encode(src)
    caches = net.new_caches()
    return torch.cat([net.decode(tgt[:, t:t + 1], memory, mask, caches, start=t)
                      for t in range(tgt.shape[1])], 1)


def inputs(net):
    src = torch.randint(3, 40, (2, 7))
    src[1, 5:] = net.pad_id
    return src, torch.randint(3, 40, (2, 6))


@pytest.mark.parametrize("positions", ["mmkit", "fairseq"])
@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_incremental_decoding_equals_full_decoding(variant, positions):
    """Under placement="everywhere" for every normalizer, and under "official" for the plain
    softmax (official cached decoding uses plain softmax, whatever the configured normalizer)."""
    normalizer, per_head = as_spec(variant)
    placements = ["everywhere"] + (["official"] if normalizer == {"name": "softmax"} else [])
    for placement in placements:
        net = model(normalizer, per_head, placement=placement, positions=positions)
        src, tgt = inputs(net)
        assert torch.allclose(cached_decode(net, src, tgt), net(src, tgt), atol=1e-10)


@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_official_incremental_decoding_equals_a_full_decode_with_softmax_self_attention(variant):
    """The reference generates with softmax in decoder self-attention: cached decoding equals a
    full decode of a copy whose decoder self-attention normalizers are plain softmax."""
    normalizer, per_head = as_spec(variant)
    net = model(normalizer, per_head, placement="official")
    with torch.no_grad():  # away from the near-identity init, so the normalizers really differ
        for module in net.modules():
            if isinstance(module, Normalizer):
                for p in module.parameters():
                    p.add_(0.5 * torch.randn_like(p))
    src, tgt = inputs(net)
    reference = copy.deepcopy(net)
    for layer in reference.decoder:
        layer.self_attn.normalizer = SoftMax()
    cached = cached_decode(net, src, tgt)
    assert torch.allclose(cached, reference(src, tgt), atol=1e-10)
    if normalizer["name"] != "softmax":
        assert not torch.allclose(cached, net(src, tgt), atol=1e-6)  # training's decoder differs


def spy_attention(net, monkeypatch):
    """(attention module name, normalizer class) of every attend() call."""
    calls, current = [], []
    real_attend = attention.attend
    monkeypatch.setattr(attention, "attend", lambda q, k, v, norm, **kw: calls.append(
        (current[-1], type(norm).__name__)) or real_attend(q, k, v, norm, **kw))
    for name, module in net.named_modules():
        if isinstance(module, MultiHeadAttention):
            def forward(*a, _f=module.forward, _n=name, **kw):
                current.append(_n.split(".", 2)[0] + "." + _n.rsplit(".", 1)[-1])
                return _f(*a, **kw)
            monkeypatch.setattr(module, "forward", forward)
    return calls


@pytest.mark.parametrize("placement", ["official", "everywhere"])
def test_placement_decides_which_attention_calls_which_normalizer(placement, monkeypatch):
    net = model("multimax", placement=placement)
    calls = spy_attention(net, monkeypatch)
    src, tgt = inputs(net)
    net(src, tgt)  # full (teacher-forced) decoding, as in training
    other = "SoftMax" if placement == "official" else "MultiMax"
    assert sorted(set(calls)) == [("decoder.cross_attn", other), ("decoder.self_attn", "MultiMax"),
                                  ("encoder.attn", "MultiMax")]
    assert len(calls) == 6
    calls.clear()
    cached_decode(net, src, tgt[:, :3])  # incremental decoding, as in generation
    assert sorted(set(calls)) == [("decoder.cross_attn", other), ("decoder.self_attn", other),
                                  ("encoder.attn", "MultiMax")]
    assert len(calls) == 2 + 3 * 2 * 2
    assert net.placement == placement


def test_placement_is_an_init_argument():
    """An init argument, so checkpoints record it (tests/test_cli_mt.py checks a real one)."""
    assert inspect.signature(Seq2SeqTransformer).parameters["placement"].default == "everywhere"
    with pytest.raises(ValueError, match="placement must be one of official, everywhere"):
        model(placement="cross")


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


def test_fairseq_sinusoid_matches_a_direct_construction():
    for dim in (16, 17):
        half = dim // 2
        positions = torch.tensor([0, 1, 2, 5, 37])
        expected = torch.zeros(len(positions), dim, dtype=torch.float64)
        for row, pos in enumerate(positions.tolist()):
            for i in range(half):
                freq = 10000.0 ** (-i / (half - 1))
                expected[row, i] = math.sin(pos * freq)
                expected[row, half + i] = math.cos(pos * freq)
        assert torch.allclose(fairseq_sinusoid(positions, dim).double(), expected, atol=1e-5)


def test_fairseq_positions_start_after_the_padding_index_and_skip_padding():
    net = model(positions="fairseq", pad_id=0)
    tokens = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]])
    half = net.d_model // 2
    pos = torch.zeros(2, 4, net.d_model, dtype=torch.float64)
    for b in range(2):
        for t in range(4):
            if tokens[b, t] != net.pad_id:  # position pad_id + 1 + t; padding gets zeros
                freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / (half - 1))
                angles = (net.pad_id + 1 + t) * freqs
                pos[b, t] = torch.cat([angles.sin(), angles.cos()])
    expected = net.embed(tokens) * math.sqrt(net.d_model) + pos
    assert torch.allclose(net._embed(tokens, net.embed), expected, atol=1e-6)
    # cached decoding numbers its steps the same way
    assert torch.allclose(net._embed(tokens[:, 2:3], net.embed, start=2), expected[:, 2:3], atol=1e-6)


def test_iwslt_preset_is_fairseqs_relu_sinusoid_and_init_and_options_override_it():
    with torch.device("meta"):
        iwslt = Seq2SeqTransformer(100, "iwslt_de_en")
        gelu = Seq2SeqTransformer(100, "iwslt_de_en", activation="gelu", positions="mmkit")
    ffn = iwslt.encoder[0].mlp
    assert isinstance(ffn[1], nn.ReLU) and isinstance(iwslt.decoder[5].mlp[1], nn.ReLU)
    assert [type(m) for m in ffn] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.Dropout]
    assert (iwslt.activation, iwslt.positions) == ("relu", "fairseq")
    assert isinstance(gelu.encoder[0].mlp[1], nn.GELU) and gelu.positions == "mmkit"
    small = model()
    assert isinstance(small.encoder[0].mlp[1], nn.GELU) and small.positions == "mmkit"
    assert isinstance(model(activation="relu").decoder[0].mlp[1], nn.ReLU)


def test_fairseq_init_is_xavier_with_gain_one_over_sqrt2_per_projection():
    torch.manual_seed(0)
    d = 32
    fair, plain = model(init="fairseq", d_model=d), model(init="torch", d_model=d)
    qkv_bound = 2 ** -0.5 * math.sqrt(6 / (d + d))  # xavier_uniform on one d x d projection
    out_bound = math.sqrt(6 / (d + d))
    for attn in (fair.encoder[0].attn, fair.decoder[1].cross_attn):
        for w in (attn.q.weight, *attn.kv.weight.chunk(2, 0)):
            assert 0.9 * qkv_bound < float(w.detach().abs().max()) <= qkv_bound
        assert 0.9 * out_bound < float(attn.proj.weight.detach().abs().max()) <= out_bound
        assert not attn.proj.bias.any()
    # PyTorch's default bound 1/sqrt(d) is smaller: the test can tell the two apart
    assert float(plain.encoder[0].attn.kv.weight.detach().abs().max()) <= d ** -0.5 < 0.9 * qkv_bound


def test_separate_source_embedding():
    joint, split = model(), model(share_all_embeddings=False, src_vocab_size=30)
    assert joint.src_embed is None and split.src_embed.weight.shape == (30, joint.d_model)
    src, tgt = inputs(split)
    src = src.clamp_max(29)
    before = split(src, tgt)
    with torch.no_grad():
        split.src_embed.weight[5:].mul_(2)
    assert not torch.allclose(split(src, tgt), before)  # the encoder reads src_embed
    memory = split.encode(src)[0]
    with torch.no_grad():
        split.embed.weight[3:].mul_(2)
    assert torch.equal(split.encode(src)[0], memory)  # and not the target embedding
    with pytest.raises(ValueError, match="src_vocab_size needs share_all_embeddings=False"):
        model(src_vocab_size=30)
