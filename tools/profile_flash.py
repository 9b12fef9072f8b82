"""Where the MultiMax flash kernel's time goes, and which tiles suit it (CUDA only).

Times each kernel alone (``triton.testing.do_bench``, median, ms) at one shape, side by
side with SDPA's forward and backward:

* the forward, the dq kernel and the dk/dv kernel at SegLU order 0 (plain softmax in
  the same kernels: the cost of the flash structure itself), 1 and 2;
* the dq kernel's parameter partial sums: none, per-row vectors, a ``[BLOCK_M, NP]`` tile;
* the one-pass backward (``fused_bwd``: Δ kernel + fused kernel) against dq + dk/dv;
* a sweep of tile sizes, warps and stages for each kernel (``--sweep``).

    python tools/profile_flash.py --seq-len 4096 --head-dim 64 --causal --sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=None, help="default 768 / head dim")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--causal", action="store_true")
    p.add_argument("--sweep", action="store_true", help="also sweep tiles, warps and stages")
    p.add_argument("--overhead", action="store_true",
                   help="host time per call of each step at a tiny size (B1 H1 N64), then exit")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_flash.py needs a CUDA GPU")
    import torch.nn.functional as F
    from triton.testing import do_bench

    from mmkit.kernels.flash._launch import (
        flash_forward,
        fold_parameters,
        launch_dkdv,
        launch_dq,
        launch_fused,
        pick_config,
    )

    if args.overhead:
        host_overhead(args.head_dim)
        return
    heads = args.heads or 768 // args.head_dim
    shape = (args.batch, heads, args.seq_len, args.head_dim)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(shape, device="cuda", generator=gen, dtype=torch.bfloat16)
                   for _ in range(4))
    scale = args.head_dim ** -0.5
    causal = args.causal
    cfg0 = pick_config(args.head_dim, q.dtype, q.device)
    print(f"# {torch.cuda.get_device_name()}, B={args.batch} H={heads} N={args.seq_len} "
          f"d={args.head_dim} causal={causal} bf16; default tiles {cfg0}")

    def bench(fn, make: bool = False) -> str:
        try:
            fn = fn() if make else fn
            return f"{do_bench(fn, warmup=25, rep=100, return_mode='median'):.3f}"
        except Exception as err:  # compile failures, out of resources
            return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"

    # SDPA, forward and backward alone
    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)
    print("| what | ms |\n|---|---|")
    print(f"| sdpa fwd | {bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))} |")
    print(f"| sdpa bwd | {bench(lambda: torch.autograd.grad(out, (qs, ks, vs), do, retain_graph=True))} |")

    params = {}
    for order in (1, 2):
        ranges = torch.tensor([-1.0, 1.5, -2.0, 2.5][: 2 * order], device="cuda")
        ts = torch.tensor([-0.2, -0.3, -0.05, -0.05][: 2 * order], device="cuda")
        params[order] = fold_parameters(ranges, ts, order, scale)
    params[0] = torch.zeros(1, 4, device="cuda")  # order 0: σ(s) = s, softmax

    def kernels(order: int, cfg, partials: int):
        prm = params[order]
        o, lse = flash_forward(q, k, v, prm, None, causal, scale, order, cfg)
        _, delta, _ = launch_dq(do, q, k, v, o, lse, prm, None, causal, scale, order, cfg, partials)
        return (lambda: flash_forward(q, k, v, prm, None, causal, scale, order, cfg),
                lambda: launch_dq(do, q, k, v, o, lse, prm, None, causal, scale, order, cfg, partials),
                lambda: launch_dkdv(do, q, k, v, lse, delta, prm, None, causal, scale, order, cfg),
                lambda: launch_fused(do, q, k, v, o, lse, prm, None, causal, scale, order, cfg, partials))

    def two_kernels(order: int, cfg, partials: int):
        _, dq, dkdv, _ = kernels(order, cfg, partials)
        return lambda: (dq(), dkdv())

    for order, partials in ((0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)):
        times = [bench(lambda i=i: kernels(order, cfg0, partials)[i], make=True) for i in range(3)]
        times.append(bench(lambda: two_kernels(order, cfg0, partials), make=True))
        times.append(bench(lambda: kernels(order, cfg0, partials)[3], make=True))
        print(f"| order {order}, partials {partials}: fwd / dq / dkdv / dq+dkdv / one-pass bwd "
              f"| {' / '.join(times)} |")

    if not args.sweep:
        return
    rep = dataclasses.replace
    fwd_tiles = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3),
                 (64, 64, 4, 2), (64, 128, 4, 3), (64, 32, 4, 3), (64, 64, 8, 3),
                 (32, 64, 4, 3), (32, 32, 4, 3)]
    print("\n| fwd (m, n, warps, stages) | order 2 ms | order 0 ms |\n|---|---|---|")
    for m, n, w, st in fwd_tiles:
        cfg = rep(cfg0, fwd_m=m, fwd_n=n, fwd_warps=w, fwd_stages=st)
        print(f"| {m, n, w, st} | {bench(lambda: kernels(2, cfg, 1)[0], True)} "
              f"| {bench(lambda: kernels(0, cfg, 0)[0], True)} |")
    bwd_tiles = [(128, 32, 8, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (32, 32, 4, 3),
                 (64, 64, 4, 2), (128, 64, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 3),
                 (64, 16, 4, 2), (128, 16, 8, 2)]
    print("\n| dq (m, n, warps, stages) | order 2, partials 1 ms | order 0 ms |\n|---|---|---|")
    for m, n, w, st in bwd_tiles:
        cfg = rep(cfg0, dq_m=m, dq_n=n, bwd_warps=w, bwd_stages=st)
        print(f"| {m, n, w, st} | {bench(lambda: kernels(2, cfg, 1)[1], True)} "
              f"| {bench(lambda: kernels(0, cfg, 0)[1], True)} |")
    print("\n| dkdv (m, n, warps, stages) | order 2 ms | order 0 ms | one-pass, order 2, "
          "partials 1 ms |\n|---|---|---|---|")
    for n, m, w, st in bwd_tiles:  # key tiles wide
        cfg = rep(cfg0, dkdv_m=m, dkdv_n=n, bwd_warps=w, bwd_stages=st)
        print(f"| {m, n, w, st} | {bench(lambda: kernels(2, cfg, 1)[2], True)} "
              f"| {bench(lambda: kernels(0, cfg, 0)[2], True)} "
              f"| {bench(lambda: kernels(2, cfg, 1)[3], True)} |")


def host_overhead(head_dim: int, calls: int = 200) -> None:
    """Host microseconds per call of each piece at a size where the GPU work is negligible."""
    import time

    from mmkit.kernels.flash import _launch as fl
    from mmkit.kernels.flash import multimax_flash_attention
    from mmkit.normalizers import MultiMax

    norm = MultiMax().cuda()
    q, k, v, do = (torch.randn(1, 1, 64, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    scale, order = head_dim ** -0.5, 2
    cfg = fl.pick_config(head_dim, q.dtype, q.device)
    prm = fl.fold_parameters(norm.ranges, norm.ts, order, scale)
    o, lse = fl.flash_forward(q, k, v, prm, None, False, scale, order, cfg)
    _, delta, part = fl.launch_dq(do, q, k, v, o, lse, prm, None, False, scale, order, cfg, 1)
    qg = q.clone().requires_grad_()

    def full():
        multimax_flash_attention(qg, k, v, norm.ranges, norm.ts).backward(do)

    def frozen():  # no parameter gradients: no partials, no unfold, no AccumulateGrad for them
        multimax_flash_attention(qg, k, v, norm.ranges.detach(), norm.ts.detach()).backward(do)

    def no_grad_forward():
        with torch.no_grad():
            multimax_flash_attention(q, k, v, norm.ranges, norm.ts)

    def backward_on_main_thread():  # what the autograd backward runs, called directly
        part = fl.flash_backward(do, q, k, v, o, lse, prm, None, False, scale, order, cfg)[3]
        fl.unfold_gradients(part, norm.ranges, norm.ts, order, 1, 1)

    class _Empty(torch.autograd.Function):  # the autograd machinery alone
        @staticmethod
        def forward(ctx, x):
            return torch.empty_like(x)

        @staticmethod
        def backward(ctx, g):
            return torch.empty_like(g)

    pieces = {
        "fold_parameters": lambda: fl.fold_parameters(norm.ranges, norm.ts, order, scale),
        "forward launch": lambda: fl.flash_forward(q, k, v, prm, None, False, scale, order, cfg),
        "dq launch": lambda: fl.launch_dq(do, q, k, v, o, lse, prm, None, False, scale, order, cfg, 1),
        "dk/dv launch": lambda: fl.launch_dkdv(do, q, k, v, lse, delta, prm, None, False, scale, order,
                                               cfg),
        "unfold_gradients": lambda: fl.unfold_gradients(part, norm.ranges, norm.ts, order, 1, 1),
        "autograd fwd+bwd (all)": full,
        "autograd fwd+bwd, frozen parameters": frozen,
        "forward under no_grad": no_grad_forward,
        "forward building the graph": lambda: multimax_flash_attention(qg, k, v, norm.ranges, norm.ts),
        "backward called on the main thread": backward_on_main_thread,
        "empty autograd.Function fwd+bwd": lambda: _Empty.apply(qg).backward(do),
        "sdpa fwd+bwd": lambda: torch.nn.functional.scaled_dot_product_attention(qg, k, v).backward(do),
    }
    print(f"# host time per call, B1 H1 N64 d{head_dim} bf16, {calls} calls, µs\n| piece | µs |\n|---|---|")
    for name, fn in pieces.items():
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        print(f"| {name} | {(time.perf_counter() - start) / calls * 1e6:.0f} |")
    import cProfile
    import pstats

    prof_py = cProfile.Profile()
    prof_py.enable()
    for _ in range(calls):
        full()
    torch.cuda.synchronize()
    prof_py.disable()
    print(f"\n# Python profile of {calls} autograd fwd+bwd calls (top 30 by own time)")
    pstats.Stats(prof_py).sort_stats("tottime").print_stats(30)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            full()
        torch.cuda.synchronize()
    print("\n# CPU profile of 20 autograd fwd+bwd calls (self CPU time)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
