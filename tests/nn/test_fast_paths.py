"""The fast-path contract: every registry entry with a fused form gets the same values and
gradients from its fast path as from the reference path, for ``attend`` and for the fused LM
head; entries without a form take the reference path; and a subclass that changes the maths
without declaring a form is never routed to a fast path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.kernels import flash
from mmkit.nn import attend, padding_mask
from mmkit.nn.lm_head import fused_linear_cross_entropy, supports_fused_head
from mmkit.normalizers import NORMALIZERS, FusedForm, MultiMax, Normalizer, SoftMax, seglu
from mmkit.normalizers.base import masked_softmax

from ..normalizers.conftest import HEADED, VARIANTS, make

B, H, NQ, NK, D = 2, 3, 5, 7, 4
ALL = VARIANTS + HEADED + [("softmax-T0.6", "softmax", {"temperature": 0.6})]


def form_reference(scores: Tensor, form: FusedForm, keep: Tensor | None) -> Tensor:
    """``softmax(map(scores))`` computed from the declared data alone."""
    if form.kind == "identity":
        y = scores
    elif form.kind == "temperature":
        y = scores / form.temperature
    else:
        r, t = form.ranges, form.ts
        if form.per_head:  # [H, 2N] -> [2N, H, 1, 1]
            r, t = r.t()[..., None, None], t.t()[..., None, None]
        else:
            r, t = r.view(-1, 1, 1, 1, 1), t.view(-1, 1, 1, 1, 1)
        y = seglu(scores if keep is None else scores.masked_fill(~keep, 0.0), r, t)
    return masked_softmax(y, keep, -1)


def qkv(dtype=torch.float64) -> list[Tensor]:
    return [torch.randn(B, H, n, D, dtype=dtype, requires_grad=True) for n in (NQ, NK, NK)]


class Spy:
    """Counts SDPA calls and normalizer forward calls (the reference path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, norm: Normalizer) -> None:
        self.sdpa = self.forward = 0
        real = F.scaled_dot_product_attention

        def sdpa(*args, **kwargs):
            self.sdpa += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
        norm.register_forward_hook(lambda *_: setattr(self, "forward", self.forward + 1))


def grads(out: Tensor, inputs: list[Tensor]) -> tuple[Tensor, ...]:
    return torch.autograd.grad(out, inputs, torch.ones_like(out), retain_graph=True, allow_unused=True)


@pytest.mark.parametrize("case", ["plain", "masked-bias", "causal"])
@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_attend_fast_path_equals_the_reference(monkeypatch, variant, case):
    _, name, kwargs = variant
    norm = make(name, kwargs)
    q, k, v = qkv()
    mask = padding_mask(torch.tensor([NK, 3]), NK) if case == "masked-bias" else None
    bias = 0.3 * torch.randn(1, H, NQ, NK, dtype=torch.float64) if case == "masked-bias" else None
    causal = case == "causal"
    inputs = [q, k, v, *norm.parameters()]
    spy = Spy(monkeypatch, norm)
    fast = attend(q, k, v, norm, mask=mask, causal=causal, bias=bias)
    form = norm.fused_form()
    if form is None or not form.is_softmax:  # the reference path (MultiMax: its CPU fused rows)
        assert (spy.sdpa, spy.forward) == (0, 1)
    else:
        assert (spy.sdpa, spy.forward) == (1, 0)
    calls = spy.forward
    ref, probs = attend(q, k, v, norm, mask=mask, causal=causal, bias=bias, need_weights=True)
    assert spy.forward == calls + 1  # need_weights: the reference path
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads(fast, inputs), grads(ref, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    if form is not None:  # the declared data is the normalizer's maths
        scores = (q * D**-0.5) @ k.transpose(-2, -1) + (0 if bias is None else bias)
        keep = None if mask is None else mask.expand(B, H, NQ, NK)
        if causal:
            keep = torch.ones(NQ, NK, dtype=torch.bool).tril(NK - NQ).expand(B, H, NQ, NK)
        expected = form_reference(scores, form, keep)
        torch.testing.assert_close(probs, expected, rtol=1e-10, atol=1e-12)
        for a, b in zip(grads(probs, inputs), grads(expected, inputs)):
            if a is not None or b is not None:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_seglu_forms_reach_the_kernel_hook_as_tensors(monkeypatch, variant):
    _, name, kwargs = variant
    norm = make(name, kwargs, dtype=torch.float32)
    seen = []
    monkeypatch.setattr(flash, "multimax_attention", lambda *a, **kw: seen.append(a) or a[0])
    form = norm.fused_form()
    if form is not None:  # (the sparse normalizers would try their Triton kernels)
        monkeypatch.setattr(Tensor, "is_cuda", property(lambda self: True))
    q, k, v = qkv(torch.float32)
    with torch.no_grad():
        attend(q, k, v, norm)
    if form is not None and form.kind == "seglu":
        assert len(seen) == 1
        _, _, _, ranges, ts = seen[0]
        assert ranges is form.ranges and ts is form.ts
    else:
        assert seen == []


@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_lm_head_fast_path_equals_the_unfused_loss(variant):
    _, name, kwargs = variant
    norm = make(name, kwargs)
    form = norm.fused_form()
    hidden = torch.randn(11, D, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, D, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 9, (11,))
    target[::4] = -100
    if form is None or form.per_head:
        assert not supports_fused_head(norm)
        with pytest.raises(ValueError, match="fused LM head supports"):
            fused_linear_cross_entropy(hidden, weight, bias, target, norm)
        return
    assert supports_fused_head(norm)
    inputs = [hidden, weight, bias, *norm.parameters()]
    for smoothing in (0.0, 0.1):
        ref = norm.loss(F.linear(hidden, weight, bias), target, label_smoothing=smoothing)
        fused = fused_linear_cross_entropy(hidden, weight, bias, target, norm, chunk_size=4,
                                           label_smoothing=smoothing)
        torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
        for a, b in zip(grads(fused, inputs), grads(ref, inputs)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


class SquaredSoftMax(SoftMax):
    """Changes the maths (``softmax(x²)``) without declaring a fused form."""

    def modulate(self, scores: Tensor) -> Tensor:
        return scores * scores


class SharpMultiMax(MultiMax):
    def modulate(self, scores: Tensor) -> Tensor:
        return 2 * super().modulate(scores)


class NamedSoftMax(SoftMax):
    """Same maths, another repr: keeps the inherited form."""

    def extra_repr(self) -> str:
        return "named"


class HalfSoftMax(SoftMax):
    """Overrides ``forward``: no longer ``softmax(modulate(x))``."""

    def forward(self, scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
        return super().forward(scores, mask, dim) / 2


class DeclaredSquare(SquaredSoftMax):
    """Declares a form of its own (a wrong one, but declared: the subclass is trusted)."""

    def _fused_form(self) -> FusedForm:
        return FusedForm("identity")


def test_a_subclass_that_changes_the_maths_takes_the_reference_path(monkeypatch):
    norm = SquaredSoftMax().double()
    assert norm.fused_form() is None and not supports_fused_head(norm)
    assert SharpMultiMax().fused_form() is None
    assert NamedSoftMax().fused_form().kind == "identity"
    assert DeclaredSquare().fused_form().kind == "identity"
    half = HalfSoftMax().double()
    assert half.fused_form() is None and not half.modulated_softmax()
    logits = torch.randn(3, 6, dtype=torch.float64)
    halved = torch.log_softmax(logits, -1) - torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(half.log_probs(logits), halved)
    assert norm.modulated_softmax()  # a new modulate is still softmax(modulate(x)): log_probs use it
    torch.testing.assert_close(norm.log_probs(logits), torch.log_softmax(logits * logits, -1))
    q, k, v = qkv()
    spy = Spy(monkeypatch, norm)
    out = attend(q, k, v, norm)
    scores = (q * D**-0.5) @ k.transpose(-2, -1)
    expected = torch.softmax(scores * scores, -1) @ v
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert (spy.sdpa, spy.forward) == (0, 1)
    for a, b in zip(grads(out, [q, k, v]), grads(expected, [q, k, v])):
        torch.testing.assert_close(a, b)


def test_fused_forms_are_declared_per_registry_entry():
    for name, cls in NORMALIZERS.items():
        form = cls().fused_form()
        assert (form is not None) == cls.is_modulated_softmax, name
    assert SoftMax(0.5).fused_form().temperature == 0.5
    learnt = SoftMax(1.5, learnable=True)
    assert learnt.fused_form().log_temperature is learnt.log_temperature
    mm = MultiMax(order=3, num_heads=2)
    form = mm.fused_form()
    assert (form.kind, form.order, form.per_head) == ("seglu", 3, True)
    assert form.ranges is mm.ranges and form.ts is mm.ts
    with pytest.raises(ValueError, match="order"):
        FusedForm("seglu", ranges=mm.ranges, ts=mm.ts, order=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        form.order = 1


@pytest.mark.parametrize("variant", ALL, ids=[v[0] for v in ALL])
def test_log_probs_and_ranking_follow_the_normalizer(variant):
    _, name, kwargs = variant
    norm = make(name, kwargs)
    logits = 2 * torch.randn(4, H, 6, 9, dtype=torch.float64)
    logp = norm.log_probs(logits)
    torch.testing.assert_close(logp.exp(), norm(logits, dim=-1), rtol=1e-10, atol=1e-12)
    if norm.is_modulated_softmax:
        torch.testing.assert_close(logp, torch.log_softmax(norm.modulate(logits), -1), rtol=0, atol=0)
    probs = norm(logits, dim=-1)
    top = norm.ranking(logits).argmax(-1, keepdim=True)
    torch.testing.assert_close(probs.gather(-1, top), probs.amax(-1, keepdim=True), rtol=0, atol=0)
    assert norm.log_probs(logits.float()).dtype == torch.float32
    assert norm.log_probs(logits.half()).dtype == torch.float32
