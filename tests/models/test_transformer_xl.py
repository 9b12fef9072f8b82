"""Transformer-XL: memory = full context, causality, cached generation, every
normalizer learns, clear errors."""

import pytest
import torch

from mmkit.models.transformer_xl import PRESETS, TransformerXL

from ..normalizers.conftest import HEADED, VARIANTS, as_spec

ALL = VARIANTS + HEADED


def model(normalizer="softmax", **kw):
    kw = {"n_head": 3, "d_head": 8, **kw} if kw.pop("heads3", False) else kw
    return TransformerXL(50, "test", normalizer=normalizer, **kw).double().eval()


@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_memory_equals_full_context(variant):
    normalizer, per_head = as_spec(variant)
    net = model(normalizer, per_head=per_head, heads3=True, mem_len=8, pre_norm=per_head)
    tokens = torch.randint(0, 50, (2, 16))
    full, _ = net(tokens)
    first, mems = net(tokens[:, :8])
    second, _ = net(tokens[:, 8:], mems)
    assert torch.allclose(first, full[:, :8], atol=1e-10)
    assert torch.allclose(second, full[:, 8:], atol=1e-10)


def test_memory_is_truncated_to_mem_len_and_detached():
    net = model(mem_len=5).train()
    _, mems = net(torch.randint(0, 50, (2, 3)))
    _, mems = net(torch.randint(0, 50, (2, 4)), mems)
    assert len(mems) == 2 and mems[0].shape == (2, 5, 32)
    assert not any(m.requires_grad for m in mems)


@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_logits_at_t_ignore_later_tokens(variant):
    normalizer, per_head = as_spec(variant)
    net = model(normalizer, per_head=per_head, heads3=True)
    tokens = torch.randint(0, 50, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    a, b = net(tokens)[0], net(changed)[0]
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-12)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax", "multimax"])
def test_cached_generation_equals_uncached(normalizer):
    net = model(normalizer, output_normalizer=normalizer, mem_len=32, tgt_len=4)
    prompt = torch.randint(0, 50, (2, 6))
    greedy = [net.generate(prompt, 10, greedy=True, use_cache=c) for c in (True, False)]
    assert torch.equal(*greedy) and greedy[0].shape == (2, 16)
    sampled = [net.generate(prompt, 10, top_k=5, temperature=0.8, use_cache=c,
                            generator=torch.Generator().manual_seed(3)) for c in (True, False)]
    assert torch.equal(*sampled)


def test_presets():
    assert PRESETS["base"] == dict(n_layer=16, d_model=410, n_head=10, d_head=41, d_inner=2100,
                                   tgt_len=150, mem_len=150)
    assert PRESETS["paper18"]["n_layer"] == 18
    net = TransformerXL(100, "base", n_layer=1)
    assert net.head.weight is net.embed.weight and len(net.attn) == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(vocab_size=0), "vocab_size must be positive"),
    (dict(preset="huge"), "unknown Transformer-XL preset"),
    (dict(d_model=-4), "d_model must be positive"),
    (dict(dropout=1.5), "dropout"),
    (dict(normalizer="nosuchmax"), "unknown normalizer"),
])
def test_bad_configuration(kwargs, match):
    args = {"vocab_size": 10, "preset": "test", **kwargs}
    with pytest.raises(ValueError, match=match):
        TransformerXL(**args)


def _perturbed_output_normalizer(net):
    with torch.no_grad():  # a non-trivial SegLU / temperature, so its gradients mean something
        for p in net.output_normalizer.parameters():
            p.uniform_(-0.8, 0.8)


@pytest.mark.parametrize("output_normalizer,tie_weights", [
    ("multimax", True), ("multimax", False),
    ({"name": "softmax", "temperature": 0.7, "learnable": True}, True),
], ids=["multimax-tied", "multimax-untied", "softmax-learnable-T"])
def test_fused_head_loss_and_gradients_equal_unfused(output_normalizer, tie_weights):
    """Same training loss and parameter gradients with memory, dropout and label smoothing."""
    net = model(output_normalizer=output_normalizer, tie_weights=tie_weights, mem_len=8, dropout=0.1,
                fused_head=True, head_chunk_size=7).train()
    _perturbed_output_normalizer(net)
    assert net.uses_fused_head
    tokens, targets = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))
    _, mems = net(torch.randint(0, 50, (2, 8)))
    params = [p for p in net.parameters() if p.requires_grad]
    results = []
    for fused in (False, True):
        torch.manual_seed(1)  # the same dropout masks
        hidden, new_mems = net.forward_hidden(tokens, mems)
        if fused:
            loss = net.head_loss(hidden, targets, label_smoothing=0.1)
        else:
            loss = net.output_normalizer.loss(net.head(hidden), targets, label_smoothing=0.1)
        results.append((loss, torch.autograd.grad(loss, params, allow_unused=True), new_mems))
    (ref, ref_grads, ref_mems), (got, grads, got_mems) = results
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)
    assert all(torch.equal(a, b) for a, b in zip(got_mems, ref_mems))


def test_forward_is_head_of_forward_hidden_and_fused_head_is_off_by_default():
    net = model(mem_len=4)
    assert not net.fused_head and not net.uses_fused_head
    tokens = torch.randint(0, 50, (2, 6))
    logits, mems = net(tokens)
    hidden, mems2 = net.forward_hidden(tokens)
    assert hidden.shape == (2, 6, 32)
    assert torch.equal(logits, net.head(hidden)) and all(torch.equal(a, b) for a, b in zip(mems, mems2))


def test_fused_head_with_a_sparse_output_normalizer_warns_and_stays_unfused():
    with pytest.warns(UserWarning, match="unfused loss"):
        net = model(output_normalizer="sparsemax", fused_head=True)
    assert not net.uses_fused_head
    tokens, targets = torch.randint(0, 50, (2, 6)), torch.randint(0, 50, (2, 6))
    hidden, _ = net.forward_hidden(tokens)
    ref = net.output_normalizer.loss(net(tokens)[0], targets)
    torch.testing.assert_close(net.head_loss(hidden, targets), ref)


def test_bad_head_chunk_size():
    with pytest.raises(ValueError, match="head_chunk_size must be positive"):
        TransformerXL(10, "test", fused_head=True, head_chunk_size=0)
