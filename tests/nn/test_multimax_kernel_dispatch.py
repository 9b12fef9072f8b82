"""Which kernel path runs: supported inputs, the fallbacks, the switches, and on CUDA that
``attend`` uses the kernel with the same values and gradients as the materialized path.

The kernel's numerics under the Triton interpreter are in ``test_multimax_kernel.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmkit.kernels import flash as kernels_pkg
from mmkit.kernels.flash import (
    multimax_attention,
    multimax_kernel_enabled,
    use_fused_backward,
    use_multimax_kernel,
)
from mmkit.nn import attend, padding_mask
from mmkit.normalizers import MultiMax

from .test_multimax_kernel import NAMES, _params, _rel


def _inputs(device="cpu", dtype=torch.float32, d=16, nq=8, nk=8):
    return [torch.randn(2, 3, n, d, device=device, dtype=dtype) for n in (nq, nk, nk)]


def test_unsupported_inputs_are_reported():
    pytest.importorskip("triton")
    from mmkit.kernels.flash import multimax_flash as flash

    q, k, v = _inputs()
    r, t = torch.rand(4), torch.rand(4)
    ok = flash.unsupported_reason
    assert ok(q, k, v, r, t, padding_mask(torch.tensor([8, 3])), 0.25) is None
    assert ok(q, k, v, r, t, torch.ones(3, 1, 8, dtype=torch.bool), 0.25) is None  # [H, 1, Nk]
    assert "dtype" in ok(*(x.double() for x in (q, k, v)), r, t, None, 0.25)
    assert "head dims" in ok(*_inputs(d=24), r, t, None, 0.25)
    assert "key masks" in ok(q, k, v, r, t, torch.ones(8, 8, dtype=torch.bool), 0.25)
    assert "key masks" in ok(q, k, v, r, t, torch.ones(1, 1, 8, 8, dtype=torch.bool), 0.25)
    assert "per-head" in ok(q, k, v, torch.rand(2, 4), torch.rand(2, 4), None, 0.25)
    assert "scale" in ok(q, k, v, r, t, None, -1.0)
    with pytest.raises(ValueError, match="head dims"):
        flash.multimax_flash_attention(*_inputs(d=24), r, t)


def test_fused_backward_dispatch(monkeypatch):
    # Which backward runs (no kernel is launched: the launchers are replaced). The
    # one-pass backward adds dq with atomics, so deterministic mode keeps the two kernels.
    from mmkit.kernels.flash import _launch as fl
    from mmkit.kernels.flash import multimax_flash as flash

    calls = []
    monkeypatch.setattr(fl, "launch_fused", lambda *a: calls.append("fused") or (1, 2, 3, 4))
    monkeypatch.setattr(fl, "launch_dq", lambda *a: calls.append("dq") or (1, None, 4))
    monkeypatch.setattr(fl, "launch_dkdv", lambda *a: calls.append("dkdv") or (2, 3))
    q, k, v = _inputs()
    args = (q, q, k, v, q, None, None, None, False, 0.25, 2)
    two = flash.pick_config(16, q.dtype, q.device)
    fused = dataclasses.replace(two, fused_bwd=True)
    assert fl.flash_backward(*args, fused, param_grad=True) == (1, 2, 3, 4)
    assert fl.flash_backward(*args, fused, param_grad=False) == (1, 2, 3, None)
    assert calls == ["fused", "fused"]
    calls.clear()
    assert fl.flash_backward(*args, two) == (1, 2, 3, 4)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert fl.flash_backward(*args, fused) == (1, 2, 3, 4)
    assert calls == ["dq", "dkdv", "dq", "dkdv"]


def test_fused_backward_flag_reaches_the_tiles(monkeypatch):
    from mmkit.kernels.flash import multimax_flash as flash

    seen = []
    monkeypatch.setattr(flash._MultiMaxFlash, "apply", lambda *a: seen.append(a[-1]))
    q, k, v = _inputs()
    r, t = torch.rand(4), torch.rand(4)
    flash.multimax_flash_attention(q, k, v, r, t)
    flash.multimax_flash_attention(q, k, v, r, t, fused_backward=True)
    flash.multimax_flash_attention(q, k, v, r, t, block=16, fused_backward=True)
    assert [c.fused_bwd for c in seen] == [False, True, True]
    assert seen[2].fwd_m == 16


def test_use_fused_backward_reaches_attend_on_cuda(monkeypatch):
    from mmkit.kernels.flash import multimax_flash as flash
    from mmkit.nn import kernels  # the public re-export of mmkit.kernels.flash

    seen = []
    monkeypatch.setattr(flash, "multimax_flash_attention", lambda *a, **kw: seen.append(kw))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    q, k, v = _inputs()
    prm = (MultiMax().ranges, MultiMax().ts)
    kernels.multimax_attention(q, k, v, *prm, mask=None, causal=False, scale=0.25)
    with kernels.use_fused_backward():
        kernels.multimax_attention(q, k, v, *prm, mask=None, causal=False, scale=0.25)
    kernels.multimax_attention(q, k, v, *prm, mask=None, causal=False, scale=0.25)
    assert [kw["fused_backward"] for kw in seen] == [False, True, False]


def test_multimax_attention_returns_none_off_cuda():
    q, k, v = _inputs()
    norm = MultiMax()
    assert multimax_attention(q, k, v, norm.ranges, norm.ts, mask=None, causal=False, scale=0.25) is None


def test_use_multimax_kernel_restores_the_flag():
    assert multimax_kernel_enabled()
    with use_multimax_kernel(False):
        assert not multimax_kernel_enabled()
        with use_multimax_kernel(True):
            assert multimax_kernel_enabled()
        assert not multimax_kernel_enabled()
    assert multimax_kernel_enabled()


@pytest.mark.gpu
def test_multimax_attention_falls_back_on_cuda_for_unsupported_inputs():
    norm = MultiMax().cuda()
    q, k, v = _inputs("cuda", torch.float64)
    assert multimax_attention(q, k, v, norm.ranges, norm.ts, mask=None, causal=False, scale=0.25) is None
    q, k, v = _inputs("cuda", d=24)
    assert multimax_attention(q, k, v, norm.ranges, norm.ts, mask=None, causal=False, scale=0.25) is None
    q, k, v = _inputs("cuda")
    full = torch.ones(1, 1, 8, 8, dtype=torch.bool, device="cuda")
    assert multimax_attention(q, k, v, norm.ranges, norm.ts, mask=full, causal=False, scale=0.25) is None
    with use_multimax_kernel(False):
        assert multimax_attention(q, k, v, norm.ranges, norm.ts, mask=None, causal=False, scale=0.25) is None
    assert multimax_attention(q, k, v, norm.ranges, norm.ts, mask=None, causal=False, scale=0.25) is not None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal,padded,per_head", [(False, False, False), (True, True, True)])
@pytest.mark.parametrize("fused_bwd", [False, True])
def test_attend_on_cuda_uses_the_kernel(monkeypatch, dtype, d, causal, padded, per_head, fused_bwd):
    calls = []

    def spy(*args, **kwargs):
        out = multimax_attention(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(kernels_pkg, "multimax_attention", spy)
    bsz, heads, nq, nk = 2, 3, 200, 333
    gen = torch.Generator().manual_seed(0)
    norm = _params(2, heads if per_head else None, gen).float().cuda()
    mask = padding_mask(torch.tensor([nk, 100], device="cuda"), nk) if padded else None
    base = [torch.randn(bsz, heads, n, d, generator=gen).to(dtype).cuda() for n in (nq, nk, nk)]
    grad = torch.randn(bsz, heads, nq, d, generator=gen).to(dtype).cuda()

    def run(fused: bool, cast: torch.dtype):
        inputs = [t.to(cast, copy=True).requires_grad_() for t in base]
        norm.zero_grad()
        with use_multimax_kernel(fused), use_fused_backward(fused_bwd):
            out = attend(*inputs, norm.to(torch.float64 if cast == torch.float64 else torch.float32),
                         mask=mask, causal=causal)
        out.backward(grad.to(cast))
        return [out, *(t.grad for t in inputs), norm.ranges.grad.clone(), norm.ts.grad.clone()]

    fused = run(True, dtype)
    assert calls == [True]
    reference = run(False, torch.float64)
    materialized = run(False, dtype)
    for name, f, m, r in zip(NAMES, fused, materialized, reference):
        err_f, err_m = _rel(f, r), _rel(m, r)
        tol = 1e-4 if dtype == torch.float32 else 2e-2 if not name.startswith("d_") else 5e-2
        assert err_f <= max(tol, 2 * err_m), f"{name}: kernel {err_f:.2e}, materialized {err_m:.2e}"


