"""The Triton MultiMax flash-attention kernel equals the materialized reference.

On CPU the kernel runs under the Triton interpreter. ``TRITON_INTERPRET=1`` must be
set before Triton itself is imported, so the interpreted cases run in one worker
process per test session (this module, run with ``--worker``); the pytest process
never imports Triton in interpreter mode, so nothing leaks into other tests (or into
the GPU tests of ``test_multimax_kernel_dispatch.py``). Every case draws fresh random
inputs and non-trivial SegLU parameters and compares O and the gradients of q, k, v,
``ranges`` and ``ts`` with an fp64 reference (``attend`` on CPU with the plain autograd
``MultiMax(fused=False)``).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from mmkit.nn import attend, padding_mask
from mmkit.normalizers import MultiMax

NAMES = ("o", "dq", "dk", "dv", "d_ranges", "d_ts")
ROOT = Path(__file__).parents[2]
RESULT = "@@result "
TIMEOUT_S = 600


def _widen_bf16_dots() -> None:
    """Triton 3.8's interpreter multiplies bf16 dot operands as raw uint16 bits; widen them
    to fp32 first (worker process only; exact, as bf16 -> fp32 is)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    original = InterpreterBuilder.create_dot

    def widen(h):
        if h.dtype != tl.bfloat16:
            return h
        return TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    InterpreterBuilder.create_dot = create_dot


def _worker() -> None:
    """Answer one JSON ``compare`` request per stdin line, under the Triton interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("the worker needs TRITON_INTERPRET=1 in its environment")
    _widen_bf16_dots()
    from mmkit.kernels.flash import multimax_flash

    for line in sys.stdin:
        case = json.loads(line)
        case["dtype"] = getattr(torch, case.get("dtype", "float32"))
        try:
            result = {"errors": compare(multimax_flash, **case)}
        except Exception:  # reported to the test, which fails with it
            result = {"exception": traceback.format_exc()}
        print(RESULT + json.dumps(result), flush=True)


class Interpreted:
    """A worker process that runs :func:`compare` with the interpreted kernel."""

    def __init__(self) -> None:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "ignore::RuntimeWarning", "-m", "tests.nn.test_multimax_kernel",
             "--worker"], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")  # EOF

    def compare(self, **case) -> dict[str, float]:
        if "dtype" in case:
            case["dtype"] = str(case["dtype"]).removeprefix("torch.")
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.lines.get(timeout=TIMEOUT_S)
            if not line:
                raise RuntimeError(f"the interpreter worker died (exit code {self.proc.wait()})")
            if line.startswith(RESULT):
                result = json.loads(line[len(RESULT):])
                if "exception" in result:
                    pytest.fail(f"kernel case {case} raised:\n{result['exception']}")
                return result["errors"]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def interp():
    pytest.importorskip("triton")
    worker = Interpreted()
    yield worker
    worker.close()


def _params(order: int, heads: int | None, gen: torch.Generator) -> MultiMax:
    norm = MultiMax(order=order, num_heads=heads, fused=False).double()
    with torch.no_grad():  # far from the near-identity init: every SegLU piece matters
        norm.ranges.copy_(torch.rand(norm.ranges.shape, generator=gen, dtype=torch.float64) * 2 - 1)
        norm.ts.copy_(torch.rand(norm.ts.shape, generator=gen, dtype=torch.float64) - 0.5)
    return norm


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def compare(flash: ModuleType, *, nq: int, nk: int, d: int = 16, order: int = 2,
            per_head: bool = False, causal: bool = False, lengths: list[int] | None = None,
            dtype: torch.dtype = torch.float32, block: int | list[int] = 32,
            seed: int = 0, param_grad: bool = True) -> dict[str, float]:
    """Relative errors (kernel vs fp64 reference) of O and all gradients.

    ``block``: square tiles, or the fields of a ``BlockConfig`` (non-square tiles; an
    11th field ``True`` runs the one-pass backward).
    ``param_grad=False``: the SegLU parameters need no gradient (the kernel skips their
    partial sums); only O, dq, dk and dv are compared.
    """
    tiles = flash.BlockConfig(*block) if isinstance(block, list | tuple) else block
    gen = torch.Generator().manual_seed(seed)
    bsz, heads = 2, 2
    norm = _params(order, heads if per_head else None, gen)

    def draw(*shape: int) -> torch.Tensor:  # rounded to dtype, so both sides see one input
        return torch.randn(*shape, generator=gen).to(dtype)

    q, k, v, grad = draw(bsz, heads, nq, d), draw(bsz, heads, nk, d), draw(bsz, heads, nk, d), draw(
        bsz, heads, nq, d)
    mask = None if lengths is None else padding_mask(torch.tensor(lengths), nk)  # [B, 1, 1, Nk]

    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = attend(*ref_in, norm, mask=mask, causal=causal)
    ref_grads = torch.autograd.grad(ref, [*ref_in, norm.ranges, norm.ts], grad.double())

    ker_in = [t.clone().requires_grad_() for t in (q, k, v)]
    ranges = norm.ranges.detach().float().requires_grad_(param_grad)
    ts = norm.ts.detach().float().requires_grad_(param_grad)
    out = flash.multimax_flash_attention(*ker_in, ranges, ts, mask=mask, causal=causal, block=tiles)
    grads = torch.autograd.grad(out, [*ker_in, ranges, ts] if param_grad else ker_in, grad)

    assert out.dtype == dtype and all(g.dtype == t.dtype for g, t in zip(grads, [*ker_in, ranges, ts]))
    assert all(torch.isfinite(t).all() for t in (out, *grads))
    if lengths is not None and 0 in lengths:  # a fully padded batch row: zeros, zero grads
        row = lengths.index(0)
        assert out[row].abs().max() == 0 and grads[0][row].abs().max() == 0
    return {name: _rel(a, b) for name, a, b in zip(NAMES, [out, *grads], [ref, *ref_grads])}


def assert_close(errors: dict[str, float], tol: float, param_tol: float | None = None) -> None:
    limits = {name: (param_tol or tol) if name.startswith("d_") else tol for name in NAMES}
    bad = {name: err for name, err in errors.items() if not err <= limits[name]}
    assert not bad, f"relative errors over {limits}: {bad}"


# --- fast cases (interpreter, small tiles, tails in every case) ----------------------------

#: BlockConfig fields: the CUDA shape scaled down (wide query tiles in fwd/dq, wide key
#: tiles in dk/dv), and its mirror, so the causal block bounds meet non-square tiles.
LIKE_CUDA = [32, 16, 4, 1, 32, 16, 16, 32, 4, 1]
MIRRORED = [16, 32, 4, 1, 16, 32, 32, 16, 4, 1]

FAST = {
    "plain": dict(nq=40, nk=40),
    "causal-short-queries-per-head-order1": dict(nq=20, nk=66, causal=True, per_head=True, order=1,
                                                 block=LIKE_CUDA),
    "padding+causal-empty-row": dict(nq=40, nk=40, causal=True, lengths=[33, 0], block=MIRRORED),
    "order3-causal": dict(nq=40, nk=40, causal=True, order=3, block=LIKE_CUDA),
    "no-parameter-grad": dict(nq=40, nk=40, causal=True, lengths=[33, 40], param_grad=False),
    # the one-pass backward (BlockConfig.fused_bwd: dq by per-tile atomics)
    "fused-bwd-padding+causal-empty-row": dict(nq=40, nk=40, causal=True, lengths=[33, 0],
                                               block=MIRRORED + [True]),
    "fused-bwd-causal-short-queries-per-head-order1": dict(nq=20, nk=66, causal=True, per_head=True,
                                                           order=1, block=LIKE_CUDA + [True]),
    "fused-bwd-key-tail-order3": dict(nq=40, nk=45, order=3, block=LIKE_CUDA + [True]),
    "fused-bwd-no-parameter-grad": dict(nq=40, nk=40, causal=True, lengths=[33, 40],
                                        param_grad=False, block=LIKE_CUDA + [True]),
    "fused-bwd-no-queries-see-keys": dict(nq=24, nk=16, causal=True, block=LIKE_CUDA + [True]),
}


@pytest.mark.parametrize("case", list(FAST))
def test_fp32_matches_reference(interp, case):
    errors = interp.compare(**FAST[case])
    assert len(errors) == (4 if FAST[case].get("param_grad") is False else 6)
    assert_close(errors, 1e-4)


@pytest.mark.parametrize("fused_bwd", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_fp32_reference(interp, dtype, fused_bwd):
    # bf16 rounds p (for p·v) and O (for Δ = rowsum(dO∘O)); the SegLU parameter gradients
    # are sums of many cancelling terms, so they get a looser bound than q, k, v.
    errors = interp.compare(nq=40, nk=40, d=32, causal=True, lengths=[40, 29], dtype=dtype,
                            block=[32] * 2 + [4, 1] + [32] * 4 + [4, 1, fused_bwd])
    if dtype == torch.float16:
        assert_close(errors, 1e-2)
    else:
        assert_close(errors, 2e-2, param_tol=5e-2)


def test_rows_without_keys_give_zeros(interp):
    # Causal with Nq > Nk: the first Nq - Nk queries see no key at all.
    errors = interp.compare(nq=24, nk=16, causal=True, block=LIKE_CUDA)
    assert_close(errors, 1e-4)


# --- the larger sweep ---------------------------------------------------------------------

SWEEP = [
    dict(nq=n, nk=n + extra, d=d, order=order, per_head=per_head, causal=causal, lengths=lengths,
         block=block)
    for n, extra, d, block in ((16, 0, 16, 16), (40, 27, 32, LIKE_CUDA), (67, 0, 16, MIRRORED),
                               (67, -27, 32, 32), (33, 14, 16, MIRRORED))
    for order in (1, 2)
    for per_head in (False, True)
    for causal, lengths in ((False, None), (True, None), (False, "pad"), (True, "pad"))
]


@pytest.mark.slow
@pytest.mark.parametrize("fused_bwd", [False, True])
@pytest.mark.parametrize("case", range(len(SWEEP)))
def test_sweep_fp32(interp, case, fused_bwd):
    kwargs = dict(SWEEP[case])
    if kwargs["lengths"] == "pad":
        kwargs["lengths"] = [kwargs["nk"] - 5, 0]
    if fused_bwd:
        block = kwargs["block"]
        kwargs["block"] = (block if isinstance(block, list) else [block] * 2 + [4, 1] + [block] * 4
                           + [4, 1]) + [True]
    assert_close(interp.compare(**kwargs), 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_head", [False, True])
def test_sweep_half(interp, dtype, per_head):
    errors = interp.compare(nq=67, nk=67, d=32, per_head=per_head, causal=True,
                            lengths=[60, 67], dtype=dtype, block=16, seed=1)
    assert_close(errors, 1e-2 if dtype == torch.float16 else 2e-2,
                 param_tol=1e-2 if dtype == torch.float16 else 5e-2)


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker()
