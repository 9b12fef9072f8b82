"""The one switch API of :mod:`mmkit.kernels`: named switches in a ``ContextVar``, and
every kernel's caller takes its reference path when the kernel is switched off."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit import kernels
from mmkit.kernels import multimax_rows, sparse_triton
from mmkit.nn import kernels as nn_kernels
from mmkit.nn import lm_head
from mmkit.normalizers import MultiMax, SoftMax


def test_defaults_and_nesting_restore_the_state():
    assert all(kernels.enabled(n) for n in kernels.SWITCHES if n != "fused_backward")
    assert not kernels.enabled("fused_backward")
    with kernels.disabled("flash", "sparse_triton"):
        assert not kernels.enabled("flash") and not kernels.enabled("sparse_triton")
        assert kernels.enabled("multimax_rows")
        with kernels.switched("flash", True), kernels.switched("fused_backward"):
            assert kernels.enabled("flash") and kernels.enabled("fused_backward")
        assert not kernels.enabled("flash") and not kernels.enabled("fused_backward")
    assert kernels.enabled("flash") and kernels.enabled("sparse_triton")
    with kernels.disabled():
        assert not any(kernels.enabled(n) for n in kernels.SWITCHES)
    assert kernels.enabled("lm_head_chunk")


def test_unknown_names_raise_listing_the_valid_ones():
    for call in (lambda: kernels.disabled("flash", "triton"), lambda: kernels.enabled("triton"),
                 lambda: kernels.switched("triton")):
        with pytest.raises(ValueError, match="unknown kernel switch 'triton'.*flash, sparse_triton"):
            call()


def test_the_old_entry_points_share_the_switches():
    with nn_kernels.use_multimax_kernel(False):
        assert not kernels.enabled("flash") and not nn_kernels.multimax_kernel_enabled()
    with nn_kernels.use_fused_backward():
        assert kernels.enabled("fused_backward")
    with sparse_triton.torch_path_only():
        assert not kernels.enabled("sparse_triton")
    assert kernels.enabled("flash") and not kernels.enabled("fused_backward")


def test_a_block_in_one_thread_does_not_switch_another():
    seen = []
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait(5)
        seen.append(kernels.enabled("flash"))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with kernels.disabled("flash"):
        inside.set()
        done.wait(5)
    thread.join(5)
    assert seen == [True]


def test_sparse_triton_off_keeps_cuda_inputs_on_the_torch_path(monkeypatch):
    monkeypatch.setattr(Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(sparse_triton, "triton_available", lambda: True)
    x = torch.randn(3, 7)
    assert sparse_triton.use_triton(x, -1)
    with kernels.disabled("sparse_triton"):
        assert not sparse_triton.use_triton(x, -1)


def test_multimax_rows_off_takes_the_eager_path_with_the_same_values(monkeypatch):
    norm = MultiMax().double()
    x = torch.randn(4, 9, dtype=torch.float64)
    fused = norm(x)
    calls = []
    real = multimax_rows.multimax_rows
    monkeypatch.setattr("mmkit.normalizers.multimax.multimax_rows", lambda *a: calls.append(1) or real(*a))
    with kernels.disabled("multimax_rows"):
        eager = norm(x)
    assert calls == [] and torch.allclose(fused, eager, rtol=1e-12, atol=1e-14)
    norm(x)
    assert calls == [1]


@pytest.mark.parametrize("norm", [SoftMax(), MultiMax()], ids=["softmax", "multimax"])
def test_lm_head_chunk_off_computes_the_unfused_loss(norm, monkeypatch):
    norm = norm.double()
    hidden = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 11, (6,))
    fused = lm_head.fused_linear_cross_entropy(hidden, weight, None, target, norm, chunk_size=4)
    monkeypatch.setattr(lm_head, "chunk_function", lambda *a: pytest.fail("the chunk ran"))
    with kernels.disabled("lm_head_chunk"):
        off = lm_head.fused_linear_cross_entropy(hidden, weight, None, target, norm, chunk_size=4)
    ref = norm.loss(F.linear(hidden, weight), target)
    assert torch.allclose(off, ref) and torch.allclose(fused, ref, rtol=1e-9)
    g_off = torch.autograd.grad(off, (hidden, weight))
    g_ref = torch.autograd.grad(ref, (hidden, weight))
    assert all(torch.allclose(a, b) for a, b in zip(g_off, g_ref))
