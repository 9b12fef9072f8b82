"""The Triton kernels of sparsemax, 1.5-entmax and α-entmax against the torch path and
the ``entmax`` package.

On CPU the kernels run under the Triton interpreter: the entry points of
``mmkit.kernels.sparse_triton`` pick interpreted kernels for CPU tensors, and
``TRITON_INTERPRET`` is set only while those are decorated (a test checks it does not
leak). ``gpu`` tests run the compiled kernels on CUDA, half inputs included.
"""

import os

import pytest
import torch

pytest.importorskip("triton")

import entmax as ref  # noqa: E402

from mmkit.kernels import enabled  # noqa: E402
from mmkit.kernels import sparse_triton as ts  # noqa: E402
from mmkit.normalizers import Entmax, entmax15, entmax_bisect, sparsemax  # noqa: E402

#: (id, Triton entry, torch path, entmax package), each ``fn(x, mask, dim)``; a tensor α
#: runs the bisection kernel, a float 1.5/2.0 the exact kernels.
KINDS = [
    ("sparsemax", ts.triton_sparsemax, sparsemax, lambda x, d: ref.sparsemax(x, d)),
    ("entmax15", ts.triton_entmax15, entmax15, lambda x, d: ref.entmax15(x, d)),
] + [
    (f"bisect{a}", lambda x, m, d, a=a: ts.triton_entmax_bisect(x, torch.tensor(a), m, d),
     lambda x, m, d, a=a: entmax_bisect(x, a, m, d),
     lambda x, d, a=a: ref.entmax_bisect(x, a, d, n_iter=100))
    for a in (1.25, 1.5, 2.0)
]
KIND_IDS = [k[0] for k in KINDS]


def fwd_bwd(fn, x, g, *params):
    """``(y, dx, [dparam, ...])`` of ``fn(x, *params)`` for the upstream gradient ``g``."""
    x = x.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in params]
    y = fn(x, *params)
    y.backward(g)
    return y.detach(), x.grad, [p.grad for p in params]


def hard_rows(n: int, rows: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows with the hard cases: ties at the top, a fully masked row, large and
    tiny magnitudes; and a random keep-mask (row 0 keeps everything)."""
    x = torch.randn(rows, n) * 3
    x[1, : max(1, n // 3)] = x[1].max()  # ties at the max
    x[3] *= 1e3  # large magnitude
    x[4] *= 1e-3  # near uniform: the support is the whole row
    mask = torch.rand(rows, n) > 0.3
    mask[0] = True
    mask[2] = False  # fully masked
    return x, mask


def assert_close(a, b, atol, what=""):
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    assert err <= atol, f"{what}: max |diff| = {err:.3g} > {atol:.1g}"


@pytest.mark.parametrize("n", [1, 5, 37, 200])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_matches_torch_path_with_masks(kind, n):
    _, ours, torch_path, _ = kind
    x, mask = hard_rows(n)
    g = torch.randn_like(x)
    y1, g1, _ = fwd_bwd(lambda t: ours(t, mask, -1), x, g)
    y2, g2, _ = fwd_bwd(lambda t: torch_path(t, mask, -1), x, g)
    assert_close(y1, y2, 2e-6, "forward")
    assert_close(g1, g2, 1e-5, "backward")
    assert torch.all(y1[~mask] == 0) and torch.all(g1[~mask] == 0)
    assert torch.isfinite(g1).all() and not y1[2].any()  # the fully masked row: zeros
    assert_close(y1[mask.any(-1)].sum(-1), torch.ones(int(mask.any(-1).sum())), 1e-6, "sum")


@pytest.mark.parametrize("n", [5, 37, 200])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_matches_entmax_package_in_fp64(kind, n):
    _, ours, _, package = kind
    x = torch.randn(5, n) * 3
    x[0, : n // 2] = x[0].max()  # ties
    x[1] *= 1e-3
    g = torch.randn_like(x)
    y1, g1, _ = fwd_bwd(lambda t: ours(t, None, -1), x, g)
    y2, g2, _ = fwd_bwd(lambda t: package(t, -1), x.double(), g.double())
    assert_close(y1, y2, 2e-6, "forward")
    assert_close(g1, g2, 1e-5, "backward")


@pytest.mark.parametrize("per_head", [False, True], ids=["scalar", "per-head"])
def test_learnable_alpha_gradient_matches_torch_path(per_head):
    norm = Entmax(alpha=1.3, learnable=True, num_heads=3 if per_head else None)
    with torch.no_grad():
        norm.alpha_logit.add_(torch.randn_like(norm.alpha_logit))
    x = torch.randn(2, 3, 9, 24) * 2  # [B, H, Nq, Nk]
    mask = torch.ones(9, 24, dtype=torch.bool).tril(15)  # broadcast over [B, H]
    g = torch.randn_like(x)
    alpha = norm._alpha_for(x, 3).detach()
    y1, g1, (ga1,) = fwd_bwd(lambda t, a: ts.triton_entmax_bisect(t, a, mask), x, g, alpha)
    y2, g2, _ = fwd_bwd(lambda t, a: entmax_bisect(t, a, mask), x, g, alpha)
    assert_close(y1, y2, 2e-6, "forward")
    assert_close(g1, g2, 1e-5, "backward x")
    # dL/dα sums many rows and scales like 1/(α-1)²: compare with the fp64 torch path.
    _, _, (ga0,) = fwd_bwd(lambda t, a: entmax_bisect(t, a, mask), x.double(), g.double(), alpha.double())
    assert ga1.shape == alpha.shape
    assert_close(ga1, ga0, 2e-4 * (1 + ga0.abs().max().item()), "backward alpha")


def test_alpha_gradient_matches_entmax_package():
    x = torch.randn(6, 30) * 2
    g = torch.randn_like(x)
    a = torch.tensor(1.35)
    _, _, (ga1,) = fwd_bwd(lambda t, al: ts.triton_entmax_bisect(t, al), x, g, a)
    _, _, (ga2,) = fwd_bwd(lambda t, al: ref.entmax_bisect(t, al, -1, n_iter=80), x.double(), g.double(),
                           a.double())
    assert_close(ga1, ga2, 1e-4 * (1 + ga2.abs().item()), "alpha grad")


@pytest.mark.parametrize("mask_shape,dim", [((12, 12), -1), ((2, 1, 1, 12), -1), ((2, 3, 12, 12), -1),
                                            ((12, 12), -2), ((1, 3, 1, 12), -1)])
def test_broadcast_masks_and_dims(mask_shape, dim):
    x = torch.randn(2, 3, 12, 12) * 2
    mask = torch.rand(mask_shape) > 0.4
    x[0, 1, 4, 7] = float("-inf")  # -inf scores count as masked
    g = torch.randn_like(x)
    for ours, torch_path in [(ts.triton_sparsemax, sparsemax), (ts.triton_entmax15, entmax15)]:
        y1, g1, _ = fwd_bwd(lambda t: ours(t, mask, dim), x, g)
        y2, g2, _ = fwd_bwd(lambda t: torch_path(t, mask, dim), x, g)
        assert_close(y1, y2, 2e-6, "forward")
        assert_close(g1, g2, 1e-5, "backward")
        assert y1[0, 1, 4, 7] == 0 and g1[0, 1, 4, 7] == 0


def test_broadcast_mask_is_not_copied():
    mask = torch.ones(64, 64, dtype=torch.bool).tril()
    m, rows_in, s_out, s_in, s_col = ts.mask_rows(mask, torch.Size([4, 8, 64, 64]), 3)
    assert m.data_ptr() == mask.data_ptr() and (rows_in, s_out, s_in, s_col) == (64, 0, 64, 1)
    pad = torch.rand(4, 1, 1, 64) > 0.5  # key padding: one row per batch element
    m, rows_in, s_out, s_in, _ = ts.mask_rows(pad, torch.Size([4, 8, 64, 64]), 3)
    assert m.data_ptr() == pad.data_ptr() and (rows_in, s_out, s_in) == (8 * 64, 64, 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(dtype):
    x, mask = hard_rows(40)
    x[3] /= 1e3  # keep the scores inside the fp16 range
    x = x.to(dtype)
    g = torch.randn(x.shape).to(dtype)
    for ours, torch_path in [(ts.triton_sparsemax, sparsemax), (ts.triton_entmax15, entmax15)]:
        y1, g1, _ = fwd_bwd(lambda t: ours(t, mask, -1), x, g)
        y2, g2, _ = fwd_bwd(lambda t: torch_path(t, mask, -1), x, g)
        assert y1.dtype == dtype and g1.dtype == dtype
        eps = torch.finfo(dtype).eps
        assert_close(y1, y2, eps, "forward")
        assert_close(g1, g2, 8 * eps, "backward")


def test_dispatch_keeps_cpu_on_the_torch_path_and_env_clean():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from mmkit.kernels import sparse_triton_kernels as tk

    x = torch.randn(3, 7)
    assert not ts.use_triton(x, -1)
    with ts.torch_path_only():
        assert not enabled("sparse_triton")
    assert enabled("sparse_triton")
    before = os.environ.get("TRITON_INTERPRET")
    tk.kernels.cache_clear()
    ts.triton_sparsemax(x)  # builds the interpreted kernels afresh
    assert os.environ.get("TRITON_INTERPRET") == before
    assert isinstance(tk.kernels(True).fwd, InterpretedFunction)
    assert isinstance(tk.kernels(False).fwd, JITFunction)  # compiled kernels unaffected


def test_user_errors():
    x = torch.randn(2, 6)
    with pytest.raises(ValueError, match="alpha must be > 1"):
        ts.triton_entmax_bisect(x, torch.tensor([1.5, 0.9]).view(2, 1))
    with pytest.raises(ValueError, match="bool"):
        ts.triton_sparsemax(x, torch.ones(2, 6))
    with pytest.raises(ValueError, match="broadcast"):
        ts.triton_sparsemax(x, torch.ones(3, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="fp32/fp16/bf16"):
        ts.triton_entmax15(x.double())
    with pytest.raises(ValueError, match="at most"):
        ts.triton_sparsemax(torch.randn(1, ts.MAX_N + 1))


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1.1, 1.25, 1.5, 1.75, 2.0, 2.5, "sparsemax", "entmax15"])
def test_sweep_against_package(alpha):
    """Errors against the package in fp64 stay within fp32's limits: below a floor, or at
    most twice the torch path's (α > 2 on near-uniform rows, or large scores, are
    ill-conditioned in fp32 for every implementation)."""
    if alpha == "sparsemax":
        ours, torch_path, package = ts.triton_sparsemax, sparsemax, lambda t: ref.sparsemax(t, -1)
    elif alpha == "entmax15":
        ours, torch_path, package = ts.triton_entmax15, entmax15, lambda t: ref.entmax15(t, -1)
    else:
        ours = lambda t: ts.triton_entmax_bisect(t, torch.tensor(alpha))  # noqa: E731
        torch_path = lambda t: entmax_bisect(t, alpha)  # noqa: E731
        package = lambda t: ref.entmax_bisect(t, alpha, -1, n_iter=100)  # noqa: E731
    for n in [1, 2, 3, 16, 17, 64, 257, 1000, 2049]:
        for scale in [1e-3, 1.0, 30.0, 1e4]:
            x = torch.randn(9, n) * scale
            g = torch.randn_like(x)
            y0, g0, _ = fwd_bwd(package, x.double(), g.double())
            y1, g1, _ = fwd_bwd(ours, x, g)
            y2, g2, _ = fwd_bwd(torch_path, x, g)
            for a, b, floor, what in [(y1, y2, 2e-6, "forward"), (g1, g2, 2e-5, "backward")]:
                ref_err = ((b.double() - (y0 if what == "forward" else g0)).abs().max().item())
                tol = max(floor, 2 * ref_err)
                assert_close(a.double(), y0 if what == "forward" else g0, tol, f"{what} n={n} scale={scale}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [197, 1024, 4096, ts.MAX_N])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_cuda_kernels_match_torch_path(kind, n, dtype):
    _, ours, torch_path, _ = kind
    x, mask = hard_rows(n, rows=12)
    x[3] /= 1e3
    x, g = x.to(dtype), torch.randn(x.shape).to(dtype)
    xc, gc, mc = x.cuda(), g.cuda(), mask.cuda()
    assert ts.use_triton(xc, -1)
    y1, g1, _ = fwd_bwd(lambda t: ours(t, mc, -1), xc, gc)
    with ts.torch_path_only():
        y2, g2, _ = fwd_bwd(lambda t: torch_path(t, mc, -1), xc, gc)
    y3, g3, _ = fwd_bwd(lambda t: torch_path(t, mc, -1), xc, gc)  # the dispatch: Triton
    tol = 2e-6 if dtype == torch.float32 else torch.finfo(dtype).eps
    assert_close(y1, y2, tol, "forward")
    assert_close(g1, g2, 10 * tol if dtype == torch.float32 else 8 * tol, "backward")
    name = kind[0]
    if name.startswith("bisect"):  # a float alpha (1.5 and 2 take the closed-form kernels)
        y1, g1, _ = fwd_bwd(lambda t: ts.triton_entmax_bisect(t, float(name[6:]), mc, -1), xc, gc)
    assert torch.equal(y1, y3) and torch.equal(g1, g3)


@pytest.mark.gpu
def test_cuda_learnable_alpha_and_long_rows():
    norm = Entmax(alpha=1.4, learnable=True, num_heads=4).cuda()
    x = torch.randn(2, 4, 32, 300, device="cuda") * 2
    g = torch.randn_like(x)
    alpha = norm._alpha_for(x, 3).detach()
    y1, g1, (ga1,) = fwd_bwd(lambda t, a: entmax_bisect(t, a), x, g, alpha)
    with ts.torch_path_only():
        y2, g2, (ga2,) = fwd_bwd(lambda t, a: entmax_bisect(t, a), x, g, alpha)
    assert_close(y1, y2, 2e-6, "forward")
    assert_close(g1, g2, 1e-5, "backward")
    assert_close(ga1, ga2, 1e-4 * (1 + ga2.abs().max().item()), "alpha")
    long = torch.randn(3, ts.MAX_N + 5, device="cuda")  # too long for a tile: torch path
    assert not ts.use_triton(long, -1)
    assert_close(sparsemax(long).sum(-1), torch.ones(3, device="cuda"), 1e-5, "long rows")
