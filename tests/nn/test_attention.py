"""attend(): the SDPA and materialized paths agree, masks hold for every normalizer,
fully padded rows stay finite, and every parameter learns."""

import pytest
import torch

from mmkit.nn import MultiHeadAttention, attend, causal_mask, padding_mask
from mmkit.normalizers import SoftMax

from ..normalizers.conftest import HEADED, VARIANTS, as_spec, make

ALL = VARIANTS + HEADED
IDS = [v[0] for v in ALL]
B, H, N, D = 2, 3, 6, 4


def qkv(nq=N, nk=N, dtype=torch.float64, grad=False):
    q = torch.randn(B, H, nq, D, dtype=dtype, requires_grad=grad)
    k = torch.randn(B, H, nk, D, dtype=dtype, requires_grad=grad)
    v = torch.randn(B, H, nk, D, dtype=dtype, requires_grad=grad)
    return q, k, v


CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "padding": dict(mask=padding_mask(torch.tensor([6, 3]))),
    "padding+causal": dict(mask=padding_mask(torch.tensor([6, 3])), causal=True),
    "bias": dict(bias=torch.randn(1, H, N, N, dtype=torch.float64)),
    "bias+padding": dict(bias=torch.randn(1, H, N, N, dtype=torch.float64),
                         mask=padding_mask(torch.tensor([2, 5]), max_len=N)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("temperature,learnable", [(1.0, False), (0.7, True)])
@pytest.mark.parametrize("nq", [N, 2])
def test_sdpa_path_equals_materialized_softmax(case, temperature, learnable, nq):
    kwargs = dict(CASES[case])
    if nq != N:  # queries are the last nq positions (KV-cache layout)
        kwargs = {k: (v[..., -nq:, :] if k == "bias" else v) for k, v in kwargs.items()}
    norm = SoftMax(temperature, learnable).double()
    q, k, v = qkv(nq=nq, grad=True)
    fast = attend(q, k, v, norm, **kwargs)  # SDPA
    slow, probs = attend(q, k, v, norm, need_weights=True, **kwargs)  # materialized
    assert torch.allclose(fast, slow, atol=1e-10)
    g_fast = torch.autograd.grad(fast.square().sum(), [q, k, v, *norm.parameters()])
    g_slow = torch.autograd.grad(slow.square().sum(), [q, k, v, *norm.parameters()])
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-10)


def test_bottom_right_causal_matches_the_last_rows_of_full_attention():
    q, k, v = qkv()
    full = attend(q, k, v, SoftMax(), causal=True)
    last = attend(q[:, :, -2:], k, v, SoftMax(), causal=True)
    assert torch.allclose(full[:, :, -2:], last, atol=1e-12)
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("variant", ALL, ids=IDS)
def test_causal_mask_hides_the_future(variant):
    _, name, kw = variant
    norm = make(name, kw)
    q, k, v = qkv()
    out, probs = attend(q, k, v, norm, causal=True, need_weights=True)
    assert (probs.masked_select(~causal_mask(N, N)) == 0).all()
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 3.0
    v2[:, :, 4:] -= 2.0
    out2 = attend(q, k2, v2, norm, causal=True)
    assert torch.allclose(out[:, :, :4], out2[:, :, :4], atol=1e-12)
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:])


@pytest.mark.parametrize("variant", ALL, ids=IDS)
def test_padding_mask_equals_truncation(variant):
    _, name, kw = variant
    norm = make(name, kw)
    q, k, v = qkv()
    mask = padding_mask(torch.tensor([N, 4]))  # second sequence: 2 padded keys
    out = attend(q, k, v, norm, mask=mask)
    truncated = attend(q[1:], k[1:, :, :4], v[1:, :, :4], norm)
    assert torch.allclose(out[1:], truncated, atol=1e-12)
    assert torch.allclose(out[:1], attend(q[:1], k[:1], v[:1], norm), atol=1e-12)


@pytest.mark.parametrize("variant", ALL, ids=IDS)
def test_fully_padded_rows_give_zeros_and_finite_gradients(variant):
    _, name, kw = variant
    norm = make(name, kw)
    q, k, v = qkv(grad=True)
    mask = padding_mask(torch.tensor([N, 0]), max_len=N)  # second sequence has no keys
    for need_weights in (False, True):
        out = attend(q, k, v, norm, mask=mask, causal=True, need_weights=need_weights)
        out = out[0] if need_weights else out
        assert torch.isfinite(out).all() and (out[1] == 0).all()
        grads = torch.autograd.grad(out.sum(), [q, k, v, *norm.parameters()])
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("variant", ALL, ids=IDS)
def test_every_parameter_of_multi_head_attention_gets_a_gradient(variant):
    spec, per_head = as_spec(variant)
    mha = MultiHeadAttention(12, H, spec, per_head=per_head).double()
    x, ctx = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 7, 12, dtype=torch.float64)
    before = set(vars(mha))
    out = mha(x, mask=padding_mask(torch.tensor([5, 3])), causal=True)
    out = out + mha(x, ctx)[0].sum()  # cross-attention
    out.square().sum().backward()
    assert set(vars(mha)) == before  # nothing stored during forward
    for pname, p in mha.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_each_layer_owns_its_normalizer_and_per_head_shapes():
    a, b = MultiHeadAttention(12, H, "multimax"), MultiHeadAttention(12, H, "multimax")
    assert a.normalizer is not b.normalizer
    assert MultiHeadAttention(12, H, "multimax", per_head=True).normalizer.ranges.shape == (H, 4)
    with pytest.raises(ValueError, match="per_head=True needs"):
        MultiHeadAttention(12, H, "sparsemax", per_head=True)


def test_need_weights_returns_probabilities():
    mha = MultiHeadAttention(12, H, "sparsemax")
    out, probs = mha(torch.randn(2, 5, 12), need_weights=True)
    assert out.shape == (2, 5, 12) and probs.shape == (2, H, 5, 5)
    assert torch.allclose(probs.sum(-1), torch.ones(2, H, 5))


def test_dropout_only_while_training():
    mha = MultiHeadAttention(12, H, "multimax", attn_drop=0.5).eval()
    x = torch.randn(2, 5, 12)
    assert torch.equal(mha(x), mha(x))


@pytest.mark.parametrize("bad,match", [
    (dict(mask=torch.ones(N, N)), "mask must be bool"),
    (dict(dropout_p=1.0), "dropout_p"),
])
def test_bad_arguments(bad, match):
    q, k, v = qkv()
    with pytest.raises(ValueError, match=match):
        attend(q, k, v, SoftMax(), **bad)
    with pytest.raises(ValueError, match=r"\[B, H, N, D\]"):
        attend(q[0], k[0], v[0], SoftMax())
    with pytest.raises(ValueError, match="divide"):
        MultiHeadAttention(10, 3)
