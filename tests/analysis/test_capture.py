"""``capture_attention``: the captured probabilities are ``need_weights=True``'s, outputs
do not change, and nothing is captured outside the context."""

import threading

import pytest
import torch

from mmkit.nn.attention import attend, capture_attention
from mmkit.normalizers import NORMALIZERS, build_normalizer

B, H, NQ, NK, D = 2, 3, 5, 7, 8


def qkv():
    return torch.randn(B, H, NQ, D), torch.randn(B, H, NK, D), torch.randn(B, H, NK, D)


@pytest.mark.parametrize("name", list(NORMALIZERS))
@pytest.mark.parametrize("setting", ["plain", "mask", "causal_bias"])
def test_captured_probs_equal_need_weights_and_output_is_unchanged(name, setting):
    q, k, v = qkv()
    norm = build_normalizer(name).eval()
    kwargs: dict = {}
    if setting == "mask":
        mask = torch.rand(B, 1, NQ, NK) > 0.4
        mask[0, 0, 1] = False  # one fully masked query row
        kwargs["mask"] = mask
    elif setting == "causal_bias":
        kwargs.update(causal=True, bias=torch.randn(1, H, NQ, NK))
    plain = attend(q, k, v, norm, **kwargs)
    _, weights = attend(q, k, v, norm, need_weights=True, **kwargs)
    calls = []
    with capture_attention(lambda *args: calls.append(args)):
        captured_out = attend(q, k, v, norm, **kwargs)
    assert len(calls) == 1
    got_norm, scores, probs, keep = calls[0]
    assert got_norm is norm and not probs.requires_grad
    torch.testing.assert_close(probs, weights)
    torch.testing.assert_close(captured_out, plain, atol=1e-5, rtol=1e-5)
    expected_scores = q @ k.transpose(-2, -1) / D**0.5 + kwargs.get("bias", 0.0)
    torch.testing.assert_close(scores, expected_scores)
    if setting == "plain":
        assert keep is None
    else:
        assert keep.dtype == torch.bool
        expected_keep = kwargs.get("mask", torch.ones(NQ, NK, dtype=torch.bool))
        if kwargs.get("causal"):
            expected_keep = torch.ones(NQ, NK, dtype=torch.bool).tril(NK - NQ)
        assert torch.equal(keep.expand(B, H, NQ, NK), expected_keep.expand(B, H, NQ, NK))


def test_gradients_are_unchanged_under_capture():
    q, k, v = (t.requires_grad_() for t in qkv())
    norm = build_normalizer("multimax")
    attend(q, k, v, norm, causal=True).square().sum().backward()
    reference = [t.grad.clone() for t in (q, k, v, norm.ranges, norm.ts)]
    for t in (q, k, v, norm.ranges, norm.ts):
        t.grad = None
    with capture_attention(lambda *args: None):
        attend(q, k, v, norm, causal=True).square().sum().backward()
    for ref, t in zip(reference, (q, k, v, norm.ranges, norm.ts)):
        torch.testing.assert_close(t.grad, ref, atol=1e-5, rtol=1e-5)


def test_nesting_exit_and_exceptions():
    q, k, v = qkv()
    norm = build_normalizer("softmax")
    outer, inner = [], []
    with capture_attention(lambda *a: outer.append(1)):
        attend(q, k, v, norm)
        with capture_attention(lambda *a: inner.append(1)):
            attend(q, k, v, norm)
        attend(q, k, v, norm)
    attend(q, k, v, norm)
    assert len(outer) == 3 and len(inner) == 1
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(lambda *a: outer.append(1)):
            raise RuntimeError("boom")
    attend(q, k, v, norm)
    assert len(outer) == 3  # the failed context left nothing active


def test_a_capture_in_one_thread_does_not_see_other_threads():
    q, k, v = qkv()
    norm = build_normalizer("softmax")
    seen = []
    started, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        started.wait(5)
        attend(q, k, v, norm)
        release.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with capture_attention(lambda *a: seen.append(threading.get_ident())):
        started.set()
        release.wait(5)
        attend(q, k, v, norm)
    worker.join(5)
    assert seen == [threading.get_ident()]
