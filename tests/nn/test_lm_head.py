"""The fused chunked LM head equals ``normalizer.loss(hidden @ W.T + b, target)`` in value
and in every gradient, never holds more than ``chunk_size`` rows of logits, and
rejects what it does not support with clear errors."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmkit.nn.lm_head import fused_linear_cross_entropy, supports_fused_head
from mmkit.normalizers import build_normalizer

T, D, V = 29, 8, 19  # 29 tokens: no chunk size below divides it

#: (id, registry name, kwargs) of the supported output normalizers.
HEADS = [
    ("multimax", "multimax", {}),
    ("multimax-order1", "multimax", {"order": 1}),
    ("multimax-order3", "multimax", {"order": 3}),
    ("softmax", "softmax", {}),
    ("softmax-T0.7", "softmax", {"temperature": 0.7}),
    ("softmax-learnable-T", "softmax", {"temperature": 1.3, "learnable": True}),
]


def head_normalizer(name, kwargs, dtype=torch.float64):
    """A supported normalizer at a non-trivial point: ranges ~ U(-1, 1), ts ~ U(-0.5, 0.5)."""
    norm = build_normalizer(name, **kwargs).to(dtype)
    with torch.no_grad():
        if name == "multimax":
            norm.ranges.uniform_(-1.0, 1.0)
            norm.ts.uniform_(-0.5, 0.5)
        elif kwargs.get("learnable"):
            norm.log_temperature.add_(0.3 * torch.randn(()))
    return norm


def inputs(dtype=torch.float64, tokens=T, ignored=True, shape=None):
    hidden = torch.randn(*(shape or (tokens,)), D, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, D, dtype=dtype) * D ** -0.5 * 1.5).requires_grad_()  # logits ~ N(0, 1.5²)
    bias = (0.3 * torch.randn(V, dtype=dtype)).requires_grad_()
    target = torch.randint(0, V, hidden.shape[:-1])
    if ignored:
        target.view(-1)[::5] = -100
    return hidden, weight, bias, target


def both(hidden, weight, bias, target, norm, **kw):
    """``(loss, grads)`` of the unfused reference and of the fused head."""
    params = [x for x in (hidden, weight, bias, *norm.parameters()) if x is not None and x.requires_grad]
    chunk_size = kw.pop("chunk_size", 7)
    ref = norm.loss(F.linear(hidden, weight, bias), target, **kw)
    fused = fused_linear_cross_entropy(hidden, weight, bias, target, norm, chunk_size=chunk_size, **kw)
    return (ref, torch.autograd.grad(ref, params)), (fused, torch.autograd.grad(fused, params))


def assert_match(ref, fused, rtol=1e-9, atol=1e-11):
    (ref_loss, ref_grads), (loss, grads) = ref, fused
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=atol)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("head", HEADS, ids=[h[0] for h in HEADS])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_unfused_fp64(head, smoothing, reduction):
    _, name, kwargs = head
    norm = head_normalizer(name, kwargs)
    ref, fused = both(*inputs(), norm, chunk_size=7, label_smoothing=smoothing, reduction=reduction)
    assert_match(ref, fused)
    if name == "multimax":  # the SegLU pieces are active: the parameter gradients are not trivial
        assert all(g.abs().min() > 0 for g in fused[1][-2:])


@pytest.mark.parametrize("chunk_size", [1, 29, 64])
@pytest.mark.parametrize("head", [HEADS[0], HEADS[-1]], ids=["multimax", "softmax-learnable-T"])
def test_matches_unfused_at_any_chunk_size(head, chunk_size):
    _, name, kwargs = head
    norm = head_normalizer(name, kwargs)
    ref, fused = both(*inputs(), norm, chunk_size=chunk_size, label_smoothing=0.1)
    assert_match(ref, fused)


@pytest.mark.parametrize("head", HEADS[:1] + HEADS[-1:], ids=["multimax", "softmax-learnable-T"])
def test_matches_unfused_fp32(head):
    _, name, kwargs = head
    norm = head_normalizer(name, kwargs, torch.float32)
    ref, fused = both(*inputs(torch.float32, tokens=200), norm, chunk_size=48, label_smoothing=0.1)
    assert_match(ref, fused, rtol=1e-4, atol=1e-5)


def test_leading_dims_no_bias_and_frozen_parameters():
    norm = head_normalizer("multimax", {})
    norm.ranges.requires_grad_(False)  # only ts learns
    hidden, weight, _, target = inputs(shape=(3, 11))
    ref, fused = both(hidden, weight, None, target, norm, chunk_size=5)
    assert_match(ref, fused)
    assert len(fused[1]) == 3  # hidden, weight, ts


def test_tied_weights():
    """The weight is the embedding that also produced the hidden states."""
    norm = head_normalizer("multimax", {})
    embed = torch.nn.Embedding(V, D).double()
    mix = torch.nn.Linear(D, D).double()
    tokens = torch.randint(0, V, (T,))
    target = torch.roll(tokens, -1)
    target[-3:] = -100
    params = [embed.weight, *mix.parameters(), *norm.parameters()]

    def run(fused: bool):
        hidden = torch.tanh(mix(embed(tokens)))  # [T, D]
        if fused:
            loss = fused_linear_cross_entropy(hidden, embed.weight, None, target, norm, chunk_size=6,
                                              label_smoothing=0.1)
        else:
            loss = norm.loss(hidden @ embed.weight.T, target, label_smoothing=0.1)
        return loss, torch.autograd.grad(loss, params)

    assert_match(run(False), run(True))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_all_targets_ignored(reduction, smoothing):
    """Like ``F.cross_entropy``: a sum is 0 and a mean over zero tokens is NaN, both with
    zero (finite) gradients."""
    norm = head_normalizer("multimax", {})
    hidden, weight, bias, target = inputs()
    target.fill_(-100)
    ref, fused = both(hidden, weight, bias, target, norm, reduction=reduction, label_smoothing=smoothing)
    if reduction == "sum":
        assert fused[0] == 0 and ref[0] == 0
    else:
        assert torch.isnan(fused[0]) and torch.isnan(ref[0])
    for g, r in zip(fused[1], ref[1]):
        assert torch.equal(g, torch.zeros_like(g)) and torch.equal(r, torch.zeros_like(r))


def test_never_holds_more_than_chunk_size_rows_of_logits(monkeypatch):
    shapes = []
    linear = F.linear

    def recording(x, w, b=None):
        out = linear(x, w, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(F, "linear", recording)
    norm = head_normalizer("multimax", {})
    hidden, weight, bias, target = inputs()
    loss = fused_linear_cross_entropy(hidden, weight, bias, target, norm, chunk_size=8)
    loss.backward()
    assert shapes == [(8, V), (8, V), (8, V), (5, V)]


def test_no_grad_and_custom_ignore_index():
    norm = head_normalizer("multimax", {})
    hidden, weight, bias, target = inputs()
    target[target == -100] = 3  # class 3 is now the ignored one
    with torch.no_grad():
        ref = norm.loss(F.linear(hidden, weight, bias), target, ignore_index=3)
        out = fused_linear_cross_entropy(hidden, weight, bias, target, norm, chunk_size=4, ignore_index=3)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_bf16_autocast_on_cpu_matches_unfused_autocast():
    """Under autocast the head runs in bf16 as the unfused ``nn.Linear`` does, loss in fp32."""
    norm = head_normalizer("multimax", {}, torch.float32)
    hidden, weight, bias, target = inputs(torch.float32, tokens=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, fused = both(hidden, weight, bias, target, norm, chunk_size=24, label_smoothing=0.1)
    assert fused[0].dtype == torch.float32
    assert_match(ref, fused, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("change,match", [
    (dict(normalizer=("multimax", {"num_heads": 2})), "per-head MultiMax"),
    (dict(normalizer=("sparsemax", {})), "SparseMax"),
    (dict(normalizer=("entmax15", {})), "Entmax15"),
    (dict(weight=torch.randn(V, D + 1, dtype=torch.float64)), "same D"),
    (dict(bias=torch.randn(V + 1, dtype=torch.float64)), "bias must have shape"),
    (dict(target=torch.randint(0, V, (T + 1,))), "target shape"),
    (dict(target=torch.rand(T, V, dtype=torch.float64)), "integer class ids"),
    (dict(weight=torch.randn(V, D)), "share a dtype"),
    (dict(reduction="none"), "reduction must be 'mean' or 'sum'"),
    (dict(chunk_size=0), "chunk_size must be a positive int"),
    (dict(label_smoothing=1.0), "label_smoothing"),
])
def test_bad_input(change, match):
    hidden, weight, bias, target = inputs()
    args = dict(hidden=hidden, weight=weight, bias=bias, target=target, normalizer=("multimax", {}))
    kw = dict(chunk_size=4)
    for key, value in change.items():
        (args if key in args else kw)[key] = value
    args["normalizer"] = build_normalizer(args["normalizer"][0], **args["normalizer"][1]).double()
    with pytest.raises(ValueError, match=match):
        fused_linear_cross_entropy(**args, **kw)


def test_supports_fused_head():
    assert supports_fused_head(build_normalizer("multimax"))
    assert supports_fused_head(build_normalizer("softmax", temperature=2.0, learnable=True))
    assert not supports_fused_head(build_normalizer("multimax", num_heads=4))
    assert not supports_fused_head(build_normalizer("evsoftmax"))


@pytest.mark.slow
def test_compiled_chunk_math_matches_unfused():
    """The torch.compile path (the CUDA default), forced on CPU: ~30 s of compilation."""
    norm = head_normalizer("multimax", {}, torch.float32)
    hidden, weight, bias, target = inputs(torch.float32, tokens=40)
    params = [hidden, weight, bias, *norm.parameters()]
    ref = norm.loss(F.linear(hidden, weight, bias), target, label_smoothing=0.1)
    fused = fused_linear_cross_entropy(hidden, weight, bias, target, norm, chunk_size=16,
                                       label_smoothing=0.1, compile=True)
    assert_match((ref, torch.autograd.grad(ref, params)), (fused, torch.autograd.grad(fused, params)),
                 rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["multimax", "softmax"])
def test_cuda_bf16_autocast_matches_unfused(name):
    norm = head_normalizer(name, {}, torch.float32).cuda()
    hidden, weight, bias, target = (x.detach().cuda().requires_grad_(x.requires_grad)
                                    for x in inputs(torch.float32, tokens=1000))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref, fused = both(hidden, weight, bias, target, norm, chunk_size=256, label_smoothing=0.1)
    assert_match(ref, fused, rtol=2e-2, atol=2e-3)


def test_bench_script_runs_on_tiny_shapes():
    path = Path(__file__).parents[2] / "tools" / "bench_lm_head.py"
    spec = importlib.util.spec_from_file_location("bench_lm_head", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = bench.main(["--device", "cpu", "--tokens", "64", "--dim", "16", "--vocab", "96",
                        "--chunk-size", "24", "--repeats", "1", "--no-compile"])
    table = "\n".join(lines)
    assert "| fused chunked MultiMax |" in table and "| softmax CE (unfused) |" in table
    assert "max abs grad diff" in table and "1.00x" in table
