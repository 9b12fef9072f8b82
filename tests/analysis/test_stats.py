"""Masked / per-row-threshold measures and the summable attention statistics, against a
row-by-row reference on fresh random inputs."""

import math

import pytest
import torch

from mmkit.analysis import attention_sums, multimodality, row_mean_eps, sparsity, summarize
from mmkit.analysis.figure1 import FIGURE1_INPUT
from mmkit.normalizers import build_normalizer

from .reference import reference_stats


def test_row_mean_eps_splits_figure1_like_the_paper():
    v = torch.tensor(FIGURE1_INPUT, dtype=torch.float64)
    p = torch.softmax(v, -1)
    eps = row_mean_eps(v)
    assert -1.0 < float(eps) < 8.0
    assert float(multimodality(v, p, eps)) == pytest.approx(float(multimodality(v, p, 0.0)))
    assert float(sparsity(v, p, eps)) == pytest.approx(math.exp(-1))


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "multimax"])
def test_masked_measures_equal_the_truncated_rows(name):
    x = torch.randn(6, 9, dtype=torch.float64) * 3
    mask = torch.rand(6, 9) > 0.3
    mask[:, 0] = True
    norm = build_normalizer(name).double()
    p = norm(x, mask=mask)
    eps = row_mean_eps(x, mask)
    s, m = sparsity(x, p, eps, mask=mask), multimodality(x, p, eps, mask=mask)
    for i in range(6):
        xi, pi = x[i][mask[i]], p[i][mask[i]]
        ei = xi.mean()
        assert float(eps[i]) == pytest.approx(float(ei))
        torch.testing.assert_close(s[i], sparsity(xi, pi, float(ei)), equal_nan=True)
        torch.testing.assert_close(m[i], multimodality(xi, pi, float(ei)), equal_nan=True)
    # -inf scores count as masked, as in the normalizers
    inf_x = x.masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(sparsity(inf_x, p, eps), s, equal_nan=True)
    torch.testing.assert_close(multimodality(inf_x, p, eps), m, equal_nan=True)


@pytest.mark.parametrize("name", ["softmax", "entmax15", "multimax", "evsoftmax"])
@pytest.mark.parametrize("eps", [None, 0.1])
def test_attention_sums_match_the_row_by_row_reference(name, eps):
    scores = torch.randn(2, 3, 5, 6) * 2
    keep = torch.rand(2, 1, 5, 6) > 0.3
    keep[1, 0, 2] = False  # a fully masked row is left out
    scores[0, 1, 0, 3] = float("-inf")  # so is a -inf score
    probs = build_normalizer(name).eval()(scores, mask=keep)
    got = summarize(attention_sums(scores, probs, keep, eps=eps, small=0.05))
    expected = reference_stats([(scores, probs, keep)], eps=eps, small=0.05)
    assert set(got) == set(expected) == {"S", "M", "entropy", "frac_small"}
    for key in got:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_totals_add_over_calls_and_chunks(monkeypatch):
    calls = [(torch.randn(1, 2, 4, 5), None), (torch.randn(3, 2, 1, 8), torch.rand(3, 1, 1, 8) > 0.2)]
    norm = build_normalizer("sparsemax")
    calls = [(x, norm(x, mask=k), k) for x, k in calls]
    total = sum(attention_sums(*c) for c in calls)
    monkeypatch.setattr("mmkit.analysis.stats.CHUNK_ELEMENTS", 7)  # one row per chunk
    chunked = sum(attention_sums(*c) for c in calls)
    torch.testing.assert_close(total, chunked)
    got, expected = summarize(total), reference_stats(calls)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


def test_undefined_statistics_are_left_out_and_bad_input_is_an_error():
    scores = torch.randn(1, 1, 2, 4)
    keep = torch.zeros(1, 1, 2, 4, dtype=torch.bool)
    keep[..., 0] = True  # one key per row: no relevant nor irrelevant entry
    got = summarize(attention_sums(scores, build_normalizer("softmax")(scores, mask=keep), keep))
    assert got == {"entropy": 0.0, "frac_small": 0.0}
    with pytest.raises(ValueError, match="differ in shape"):
        attention_sums(scores, scores[..., :2], None)
    with pytest.raises(ValueError, match="small"):
        attention_sums(scores, scores, None, small=0.0)
