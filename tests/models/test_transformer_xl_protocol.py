"""Transformer-XL as the original builds and evaluates it: shared u/v, clamp_len and
same_length (against direct constructions), eval-mode lengths, the original's init."""

import math

import pytest
import torch

from mmkit.models.transformer_xl import Lengths, TransformerXL
from mmkit.nn.positions import sinusoid
from mmkit.nn.relative import RelativeAttention, relative_positions, same_length_mask
from mmkit.tasks.optim import param_groups


def model(**kw):
    return TransformerXL(50, "test", **kw).double().eval()


# ---- shared u/v ---------------------------------------------------------------------------

@pytest.mark.parametrize("untie_r", [False, True])
def test_position_bias_parameters_are_shared_unless_untied(untie_r):
    n_layer, n_head, d_head = 3, 2, 16
    net = TransformerXL(50, "test", n_layer=n_layer, untie_r=untie_r)
    biases = {name: p for name, p in net.named_parameters() if name.rsplit(".", 1)[-1] in ("u", "v")}
    expected = n_head * d_head * 2 * (n_layer if untie_r else 1)
    assert sum(p.numel() for p in biases.values()) == expected
    assert set(biases) == ({f"attn.{i}.{b}" for i in range(n_layer) for b in "uv"} if untie_r else {"u", "v"})
    other = TransformerXL(50, "test", n_layer=n_layer, untie_r=not untie_r)
    difference = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in other.parameters())
    assert difference == (1 if untie_r else -1) * (n_layer - 1) * 2 * n_head * d_head
    no_decay = {id(p) for p in param_groups(net)[1]["params"]}
    assert all(id(p) in no_decay for p in biases.values())


def test_shared_biases_are_used_by_every_layer():
    net = model(n_layer=2)
    tokens = torch.randint(0, 50, (2, 6))
    before = net(tokens)[0]
    with torch.no_grad():
        net.u.add_(0.3)
    assert not torch.allclose(net(tokens)[0], before)
    grads = torch.autograd.grad(net.train()(tokens)[0].square().sum(), [net.u, net.v])
    assert all(g.abs().sum() > 0 for g in grads)


# ---- clamp_len and same_length against direct constructions -------------------------------

def original_same_length_mask(qlen, mlen, mem_len):
    """The original's ``dec_attn_mask`` with ``same_length`` (True = masked), as written in
    ``MemTransformerLM._forward``."""
    klen = mlen + qlen
    ones = torch.ones(qlen, klen)
    mask_len = klen - mem_len
    mask_shift_len = qlen - mask_len if mask_len > 0 else qlen
    return (torch.triu(ones, 1 + mlen) + torch.tril(ones, -mask_shift_len)).bool()


@pytest.mark.parametrize("qlen,mlen,mem_len", [(4, 0, 8), (6, 0, 4), (4, 8, 8), (3, 5, 8), (5, 7, 3),
                                                (1, 10, 10), (8, 0, 1)])
def test_same_length_mask_is_the_originals(qlen, mlen, mem_len):
    keep = same_length_mask(qlen, mlen + qlen, mem_len)
    causal = torch.arange(mlen + qlen)[None, :] <= mlen + torch.arange(qlen)[:, None]
    assert torch.equal(~(keep & causal), original_same_length_mask(qlen, mlen, mem_len))
    seen = (mlen + torch.arange(qlen) + 1).clamp(max=mem_len)  # mem_len keys once there are that many
    assert torch.equal((keep & causal).sum(-1), seen)


def test_clamped_positions_are_the_sinusoid_of_the_clamped_distance():
    dim, keys, clamp = 8, 12, 5
    got = relative_positions(keys, dim, clamp).double()
    for d in range(keys):
        p = min(d, clamp)
        want = [math.sin(p / 10000 ** (2 * i / dim)) for i in range(dim // 2)]
        want += [math.cos(p / 10000 ** (2 * i / dim)) for i in range(dim // 2)]
        torch.testing.assert_close(got[d], torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(relative_positions(keys, dim, -1), relative_positions(keys, dim, keys))


def test_relative_positions_use_the_shared_sinusoid_for_any_width():
    distances = torch.arange(9)
    for dim in (6, 7):  # an odd width gets a zero last column, not dim + 1 columns
        table = relative_positions(9, dim)
        assert table.shape == (9, dim)
        assert torch.equal(table, sinusoid(distances, dim))
    odd = relative_positions(9, 7).double()
    want = torch.tensor([[math.sin(p / 10000 ** (2 * i / 7)) for i in range(3)] for p in range(9)],
                        dtype=torch.float64)
    torch.testing.assert_close(odd[:, :3], want, atol=1e-6, rtol=0)
    assert torch.equal(odd[:, 6], torch.zeros(9, dtype=torch.float64))


@pytest.mark.parametrize("clamp_len,window", [(-1, None), (2, None), (-1, 5), (3, 4)])
def test_relative_attention_equals_a_direct_construction(clamp_len, window):
    torch.manual_seed(0)
    b, t, m, c, h, dh = 2, 4, 3, 8, 2, 4
    attn = RelativeAttention(c, h, dh, "softmax", False, 0.0, 0.0, pre_norm=False).double().eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x, mem = torch.randn(b, t, c, dtype=torch.float64), torch.randn(b, m, c, dtype=torch.float64)
    pos = relative_positions(m + t, c, clamp_len).double()
    keep = None if window is None else same_length_mask(t, m + t, window)
    got = attn(x, mem, pos, keep=keep)

    ctx = torch.cat([mem, x], 1)  # [B, K, C]
    q = (x @ attn.q.weight.T).view(b, t, h, dh)
    k, v = (ctx @ attn.kv.weight.T).view(b, m + t, 2, h, dh).unbind(2)
    want = torch.empty(b, t, h * dh, dtype=torch.float64)
    for bi in range(b):
        for i in range(t):
            for hi in range(h):
                scores = torch.full((m + t,), -math.inf, dtype=torch.float64)
                for j in range(m + t):
                    p = m + i
                    if j > p or (window is not None and j <= p - window):
                        continue
                    d = p - j if clamp_len <= 0 else min(p - j, clamp_len)
                    r = relative_positions(d + 1, c)[d].double() @ attn.r.weight.T  # [H*Dh]
                    r = r.view(h, dh)[hi]
                    scores[j] = ((q[bi, i, hi] + attn.u[hi]) @ k[bi, j, hi]
                                 + (q[bi, i, hi] + attn.v[hi]) @ r) / math.sqrt(dh)
                want[bi, i, hi * dh:(hi + 1) * dh] = torch.softmax(scores, 0) @ v[bi, :, hi]
    want = attn.norm(x + want @ attn.out.weight.T)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# ---- memory = full context, with the original's evaluation settings --------------------------

@pytest.mark.parametrize("kw", [
    dict(clamp_len=3), dict(clamp_len=1000), dict(same_length=True), dict(same_length=True, clamp_len=2),
    dict(same_length=True, untie_r=True, pre_norm=True),
], ids=["clamp3", "clamp-large", "same-length", "same-length-clamp2", "same-length-untied-prenorm"])
def test_memory_equals_full_context_with_clamp_and_same_length(kw):
    """With same_length the window is mem_len keys, so a memory of mem_len is the full context
    even when the stream is longer; without it the memory must hold the whole past (16)."""
    net = model(mem_len=8 if kw.get("same_length") else 16, **kw)
    tokens = torch.randint(0, 50, (2, 17))
    full, _ = net(tokens)
    parts, mems = [], None
    for start, end in ((0, 5), (5, 10), (10, 17)):
        logits, mems = net(tokens[:, start:end], mems)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)


def test_cached_generation_equals_uncached_beyond_the_memory_with_same_length():
    net = model(mem_len=4, tgt_len=3, eval_same_length=True, eval_clamp_len=2)
    prompt = torch.randint(0, 50, (2, 7))
    cached, uncached = (net.generate(prompt, 9, greedy=True, use_cache=c) for c in (True, False))
    assert torch.equal(cached, uncached) and cached.shape == (2, 16)


def test_clamp_len_and_same_length_change_the_output():
    base = model(mem_len=8)
    tokens = torch.randint(0, 50, (2, 12))
    for kw in (dict(clamp_len=2), dict(same_length=True)):
        other = model(mem_len=8, **kw)
        other.load_state_dict(base.state_dict())
        assert not torch.allclose(other(tokens)[0], base(tokens)[0])


def test_eval_mode_uses_the_eval_lengths():
    net = model(mem_len=4, eval_mem_len=10, eval_clamp_len=3, eval_same_length=True, dropout=0.0)
    assert net.lengths(True) == Lengths(4, -1, False) and net.lengths(False) == Lengths(10, 3, True)
    tokens = torch.randint(0, 50, (2, 12))
    assert net.train()(tokens)[1][0].shape[1] == 4 and net.eval()(tokens)[1][0].shape[1] == 10
    ref = model(mem_len=10, clamp_len=3, same_length=True, dropout=0.0)
    ref.load_state_dict(net.state_dict())
    torch.testing.assert_close(net.eval()(tokens)[0], ref(tokens)[0], rtol=0, atol=0)
    ref_train = model(mem_len=4, dropout=0.0)
    ref_train.load_state_dict(net.state_dict())
    torch.testing.assert_close(net.train()(tokens)[0], ref_train.train()(tokens)[0], rtol=0, atol=0)
    assert not torch.allclose(net.train()(tokens)[0], net.eval()(tokens)[0])
    inherit = model(mem_len=6, clamp_len=5, same_length=True)
    assert inherit.lengths(False) == inherit.lengths(True) == Lengths(6, 5, True)


@pytest.mark.parametrize("kwargs,match", [
    (dict(same_length=True, mem_len=0), "same_length needs mem_len >= 1"),
    (dict(eval_same_length=True, eval_mem_len=0), "eval_same_length needs eval_mem_len >= 1"),
    (dict(eval_mem_len=-1), "eval_mem_len must be positive"),
    (dict(init="kaiming"), "init must be 'original' or 'xavier'"),
    (dict(init_std=0.0), "init_std > 0"),
])
def test_bad_protocol_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerXL(10, "test", **kwargs)


# ---- initialisation ---------------------------------------------------------------------------

def _stats(tensors):
    flat = torch.cat([t.detach().flatten() for t in tensors]).double()
    return flat.mean().item(), flat.std().item(), flat


def test_original_init_statistics():
    torch.manual_seed(0)
    net = TransformerXL(2000, "test", n_layer=2, d_model=64, n_head=4, d_head=16, d_inner=128,
                        normalizer="multimax")
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)]
    mean, std, _ = _stats([m.weight for m in linears if m is not net.head])
    assert abs(mean) < 2e-3 and abs(std - 0.02) < 1e-3
    mean, std, _ = _stats([net.embed.weight])
    assert abs(mean) < 1e-3 and abs(std - 0.02) < 1e-3 and net.head.weight is net.embed.weight
    assert all(torch.all(m.bias == 0) for m in linears + norms if m.bias is not None)
    mean, std, _ = _stats([m.weight for m in norms])
    assert abs(mean - 1.0) < 5e-3 and abs(std - 0.02) < 5e-3
    mean, std, _ = _stats([net.u, net.v])
    assert abs(mean) < 6e-3 and abs(std - 0.02) < 6e-3
    ranges = [n.ranges for a in net.attn for n in [a.normalizer]]  # MultiMax keeps its own init
    assert all(r.abs().max() < 0.1 and r.abs().sum() > 0 for r in ranges)


def test_xavier_init_is_mmkits_earlier_scheme():
    torch.manual_seed(0)
    net = TransformerXL(2000, "test", n_layer=2, d_model=64, n_head=4, d_head=16, d_inner=128,
                        init="xavier", untie_r=True)
    _, std, _ = _stats([net.embed.weight])
    assert abs(std - 64 ** -0.5) < 0.005
    for m in net.modules():
        if isinstance(m, torch.nn.Linear) and m is not net.head:
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            _, std, flat = _stats([m.weight])
            assert flat.abs().max() <= bound and abs(std - bound / math.sqrt(3)) < 0.15 * bound
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert all(torch.all(p == 0) for a in net.attn for p in (a.u, a.v))
    assert torch.all(net.head.bias == 0)


def test_init_std_reaches_the_adaptive_modules():
    net = TransformerXL(300, "test", cutoffs=[100, 200], div_val=2, init_std=0.05)
    tables = [p for name, p in net.embed.named_parameters() if "proj" not in name]
    _, std, _ = _stats(tables)
    assert abs(std - 0.05) < 0.005
