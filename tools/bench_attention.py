"""Attention fwd+bwd time and peak memory on CUDA: SDPA vs the MultiMax kernel vs alternatives.

For every (N, head dim, causal) config it first checks the MultiMax kernel against the
fp32 materialized reference (max errors of O and of the q/k/v/parameter gradients, on
one batch row and two heads), then times fwd+bwd (``triton.testing.do_bench``, median)
and measures the peak memory above the inputs for:

* ``sdpa``: softmax through ``F.scaled_dot_product_attention`` (the baseline);
* ``multimax``: the Triton MultiMax flash kernel (mmkit.kernels.flash);
* ``multimax-fused``: the same kernel with the one-pass backward (``fused_bwd``: dq by
  per-tile atomics, σ and σ′ computed once);
* ``compiled``: the materialized MultiMax reference under ``torch.compile``;
* ``flex``: FlexAttention with the SegLU ``score_mod``, parameters requiring grad.

Ratios are to SDPA measured side by side in the same run; the targets for the kernel
are time ≤ 1.3x and memory ≤ 1.1x SDPA. Failures (OOM, compile errors) are reported
per cell. Needs CUDA.

    python tools/bench_attention.py --quick
    python tools/bench_attention.py --seq-lens 4096 --head-dims 64 --causal yes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

TIME_TARGET, MEM_TARGET = 1.3, 1.1
METHODS = ("sdpa", "multimax", "multimax-fused", "compiled", "flex")
KERNELS = ("multimax", "multimax-fused")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=None,
                   help="heads (default 12 at head dim 64, 768/d otherwise)")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 8192])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--causal", choices=["both", "yes", "no"], default="both")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup (ms)")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time (ms)")
    p.add_argument("--quick", action="store_true", help="one small config: N=1024, d=64, causal")
    args = p.parse_args(argv)
    if args.quick:
        args.seq_lens, args.head_dims, args.causal = [1024], [64], "yes"
    return args


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "run it on a GPU machine.")


def make_multimax(order: int = 2):
    """A MultiMax with non-trivial SegLU parameters (far from the identity init)."""
    import torch

    from mmkit.normalizers import MultiMax

    norm = MultiMax(order=order, fused=False).cuda()
    with torch.no_grad():
        norm.ranges.copy_(torch.tensor([-1.0, 1.5, -2.0, 2.5]))
        norm.ts.copy_(torch.tensor([-0.2, -0.3, -0.05, -0.05]))
    return norm


def reference(q, k, v, norm, causal: bool):
    """The materialized MultiMax attention (what ``attend`` does without the kernel)."""
    from mmkit.nn.masks import causal_mask

    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # [B, H, Nq, Nk]
    keep = causal_mask(q.shape[-2], k.shape[-2], q.device) if causal else None
    return norm(scores, mask=keep) @ v


def flex_fn(causal: bool, n: int):
    """FlexAttention with the SegLU score_mod (one [1]-tensor per parameter, grads flow)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention)
    block_mask = None
    if causal:
        block_mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, None, None, n, n)

    def run(q, k, v, norm):
        r = [norm.ranges[i:i + 1] for i in range(norm.ranges.numel())]
        t = [norm.ts[i:i + 1] for i in range(norm.ts.numel())]

        def score_mod(score, b, h, q_idx, kv_idx):
            x = score
            for i in range(len(r) // 2):
                below = torch.relu(r[2 * i][0] - score) ** (i + 1)
                above = torch.relu(score - r[2 * i + 1][0]) ** (i + 1)
                x = x + t[2 * i][0] * below + t[2 * i + 1][0] * above
            return x

        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask)

    return run


def build(method: str, causal: bool, n: int) -> Callable:
    import torch
    import torch.nn.functional as F

    from mmkit.kernels.flash import multimax_flash_attention

    if method == "sdpa":
        return lambda q, k, v, norm: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if method in KERNELS:
        return lambda q, k, v, norm: multimax_flash_attention(
            q, k, v, norm.ranges, norm.ts, causal=causal, fused_backward=method == "multimax-fused")
    if method == "compiled":
        compiled = torch.compile(reference)
        return lambda q, k, v, norm: compiled(q, k, v, norm, causal)
    return flex_fn(causal, n)


def check_kernel(q, k, v, norm, causal: bool, fused_bwd: bool = False) -> str:
    """Max abs errors of the kernel vs the fp32 materialized reference (1 batch row, 2 heads)."""
    import torch

    from mmkit.kernels.flash import multimax_flash_attention

    sub = [t[:1, :2].detach() for t in (q, k, v)]
    grad = torch.randn_like(sub[0])
    params = [norm.ranges, norm.ts]
    ref_in = [t.float().requires_grad_() for t in sub]
    ref = reference(*ref_in, norm, causal)
    ref_g = torch.autograd.grad(ref, [*ref_in, *params], grad.float())
    ker_in = [t.clone().requires_grad_() for t in sub]
    out = multimax_flash_attention(*ker_in, norm.ranges, norm.ts, causal=causal,
                                   fused_backward=fused_bwd)
    ker_g = torch.autograd.grad(out, [*ker_in, *params], grad)
    parts = []
    for name, a, b in zip(("O", "dq", "dk", "dv", "d_ranges", "d_ts"), (out, *ker_g), (ref, *ref_g)):
        err = (a.float() - b).abs().max().item()
        rel = ((a.float() - b).norm() / b.norm().clamp_min(1e-30)).item()
        parts.append(f"{name} {err:.1e} (rel {rel:.1e})")
    name = "fused-backward kernel" if fused_bwd else "kernel"
    return f"{name} vs fp32 reference, max abs err: " + ", ".join(parts)


def measure(fn: Callable, q, k, v, norm, grad, warmup: int, rep: int) -> tuple[float, float]:
    """(median fwd+bwd ms, peak MiB above what is allocated before the call)."""
    import torch
    from triton.testing import do_bench

    leaves = [q, k, v, norm.ranges, norm.ts]

    def step():
        fn(q, k, v, norm).backward(grad)

    step()  # compile / autotune outside the timing and the memory peak
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    for t in leaves:
        t.grad = None
    ms = do_bench(step, warmup=warmup, rep=rep, grad_to_none=leaves, return_mode="median")
    return ms, peak


def _short(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first[:150]}"


def run_config(args: argparse.Namespace, n: int, d: int, causal: bool) -> list[str]:
    import torch

    heads = args.heads or (12 if d == 64 else max(1, 768 // d))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    torch.manual_seed(0)
    q, k, v = (torch.randn(args.batch, heads, n, d, device="cuda", dtype=dtype).requires_grad_()
               for _ in range(3))
    grad = torch.randn_like(q)
    norm = make_multimax()
    title = f"B={args.batch} H={heads} N={n} d={d} causal={causal} {args.dtype}"
    lines = [f"\n### {title}"]
    for method in (m for m in KERNELS if m in args.methods):
        try:
            lines.append(check_kernel(q, k, v, norm, causal, method == "multimax-fused"))
        except Exception as err:  # reported, not fatal
            lines.append(f"{method} check failed: {_short(err)}")
    results: dict[str, tuple[float, float] | str] = {}
    for method in args.methods:
        try:
            results[method] = measure(build(method, causal, n), q, k, v, norm, grad,
                                      args.warmup, args.rep)
        except torch.cuda.OutOfMemoryError:
            results[method] = "OOM"
        except Exception as err:  # a failing cell does not stop the table
            results[method] = _short(err)
        torch.cuda.empty_cache()
    lines += ["| method | fwd+bwd ms | peak MiB | time / sdpa | memory / sdpa |", "|---|---|---|---|---|"]
    base = results.get("sdpa")
    for method, res in results.items():
        if isinstance(res, str):
            lines.append(f"| {method} | {res} | | | |")
            continue
        ms, mib = res
        if isinstance(base, tuple):
            t_ratio, m_ratio = ms / base[0], mib / base[1] if base[1] > 0 else float("nan")
            lines.append(f"| {method} | {ms:.3f} | {mib:,.0f} | {t_ratio:.2f}x | {m_ratio:.2f}x |")
        else:
            lines.append(f"| {method} | {ms:.3f} | {mib:,.0f} | n/a | n/a |")
    for method in KERNELS:
        mm = results.get(method)
        if not (isinstance(base, tuple) and isinstance(mm, tuple)):
            continue
        t_ratio, m_ratio = mm[0] / base[0], mm[1] / base[1] if base[1] > 0 else float("nan")
        lines.append(f"{method} / sdpa = {t_ratio:.2f}x time (target ≤{TIME_TARGET}x: "
                     f"{'met' if t_ratio <= TIME_TARGET else 'NOT met'}), {m_ratio:.2f}x memory "
                     f"(target ≤{MEM_TARGET}x: {'met' if m_ratio <= MEM_TARGET else 'NOT met'})")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_cuda()
    import torch
    import triton

    print(f"# bench_attention on {torch.cuda.get_device_name()} (torch {torch.__version__}, "
          f"triton {triton.__version__}); command: {' '.join(sys.argv)}")
    causals = {"both": [False, True], "yes": [True], "no": [False]}[args.causal]
    for d in args.head_dims:
        for n in args.seq_lens:
            for causal in causals:
                print("\n".join(run_config(args, n, d, causal)), flush=True)


if __name__ == "__main__":
    main()
