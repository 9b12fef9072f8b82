"""Forward+backward time of every normalizer vs torch.softmax and the entmax package.

All candidates run on the same tensors, interleaved round by round, and the
table reports each one's median time as a ratio to torch.softmax (and, for the
sparse ones, to the entmax package's function). Shapes are attention-like:
``(B·H·N, N)`` rows. On CUDA the sparse normalizers run the Triton kernels; the
table adds their torch path, the GPU targets (fwd+bwd <= 2x torch.softmax for
sparsemax/entmax15, <= 5x for α-entmax) and a parity check against the entmax
package (computed in fp32 on the same scores).

    python tools/bench_normalizers.py                 # CPU, N = 197 and 1024
    python tools/bench_normalizers.py --n 197 --bh 4 --repeats 5
    python tools/bench_normalizers.py --device cuda   # N = 197, 1024, 4096
    python tools/bench_normalizers.py --device cuda --dtype bfloat16 --bh 32
    python tools/bench_normalizers.py --device cuda --n 197 --profile "mmkit sparsemax"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from mmkit.kernels.sparse_triton import torch_path_only
from mmkit.normalizers import build_normalizer, entmax_bisect

try:
    import entmax as entmax_pkg
except ImportError:  # the dev extra installs it
    entmax_pkg = None

Fn = Callable[[torch.Tensor], torch.Tensor]


def _torch_path(fn: Fn) -> Fn:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch_path_only():
            return fn(x)
    return run


def _learnable(alpha: float, device: str) -> tuple[Fn, Fn]:
    """Ours and the package's α-entmax with a tensor α that requires grad, so the
    backward computes dL/dα too."""
    a_ours = torch.tensor(alpha, device=device, requires_grad=True)
    a_pkg = torch.tensor(alpha, device=device, requires_grad=True)
    return (lambda x: entmax_bisect(x, a_ours)), (lambda x: entmax_pkg.entmax_bisect(x, a_pkg, -1))


def candidates(device: str, gpu: bool | None = None) -> dict[str, Fn]:
    """Everything timed; ``gpu`` (default: a CUDA device) adds the torch-path and
    learnable-α rows."""
    gpu = device.startswith("cuda") if gpu is None else gpu
    mm = build_normalizer("multimax").to(device)
    mm_ref = build_normalizer("multimax", fused=False).to(device)
    mm_ref.load_state_dict(mm.state_dict())
    sparse = {
        "mmkit sparsemax": build_normalizer("sparsemax").to(device),
        "mmkit entmax15": build_normalizer("entmax15").to(device),
        "mmkit entmax a=1.5": build_normalizer("entmax", alpha=1.5).to(device),
        "mmkit entmax a=1.3": build_normalizer("entmax", alpha=1.3).to(device),
    }
    learn_ours, learn_pkg = _learnable(1.3, device)
    if gpu:
        sparse["mmkit entmax learnable a=1.3"] = learn_ours
        sparse |= {f"{k} (torch path)": _torch_path(v) for k, v in list(sparse.items())}
    table = {
        "torch.softmax": lambda x: torch.softmax(x, -1),
        "mmkit softmax": build_normalizer("softmax").to(device),
        "mmkit multimax": mm,
        "mmkit multimax (unfused eager)": mm_ref,
        "mmkit evsoftmax": build_normalizer("evsoftmax").to(device),
        **sparse,
    }
    if entmax_pkg is not None:
        table |= {
            "entmax.sparsemax": lambda x: entmax_pkg.sparsemax(x, -1),
            "entmax.entmax15": lambda x: entmax_pkg.entmax15(x, -1),
            "entmax.entmax_bisect a=1.5": lambda x: entmax_pkg.entmax_bisect(x, 1.5, -1),
            "entmax.entmax_bisect a=1.3": lambda x: entmax_pkg.entmax_bisect(x, 1.3, -1),
        }
        if gpu:
            table["entmax.entmax_bisect learnable a=1.3"] = learn_pkg
    return table


#: Which entmax-package function each of ours is compared with.
PACKAGE_PEER = {
    "mmkit sparsemax": "entmax.sparsemax",
    "mmkit entmax15": "entmax.entmax15",
    "mmkit entmax a=1.5": "entmax.entmax_bisect a=1.5",
    "mmkit entmax a=1.3": "entmax.entmax_bisect a=1.3",
    "mmkit entmax learnable a=1.3": "entmax.entmax_bisect learnable a=1.3",
}
PACKAGE_PEER |= {f"{k} (torch path)": v for k, v in PACKAGE_PEER.items()}

#: GPU targets, fwd+bwd time / torch.softmax.
TARGETS = {"mmkit sparsemax": 2.0, "mmkit entmax15": 2.0, "mmkit entmax a=1.5": 5.0,
           "mmkit entmax a=1.3": 5.0, "mmkit entmax learnable a=1.3": 5.0}


def fwd_bwd(fn: Fn, x: torch.Tensor, g: torch.Tensor) -> float:
    """Seconds for ``fn(x).backward(g)`` (CUDA events on GPU)."""
    x = x.detach().requires_grad_()
    if x.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x).backward(g)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_t = time.perf_counter()
    fn(x).backward(g)
    return time.perf_counter() - start_t


def parity(fn: Fn, peer: Fn, x: torch.Tensor, g: torch.Tensor) -> str:
    """Max |ours - package| of the output and of dL/dx; the package runs in fp32."""
    outs = []
    for f, inp in ((fn, x), (peer, x.float())):
        inp = inp.detach().clone().requires_grad_()
        y = f(inp)
        y.backward(g.to(y.dtype))
        outs.append((y.detach().float(), inp.grad.float()))
    (y1, g1), (y2, g2) = outs
    return f"{(y1 - y2).abs().max().item():.1e} / {(g1 - g2).abs().max().item():.1e}"


def bench(n: int, bh: int, device: str, repeats: int, scale: float,
          dtype: torch.dtype = torch.float32, gpu: bool | None = None) -> list[str]:
    """The markdown table for one N; ``gpu`` (default: a CUDA device) adds the torch
    paths, the GPU targets and the parity column."""
    gpu = device.startswith("cuda") if gpu is None else gpu
    x = (torch.randn(bh * n, n, device=device) * scale).to(dtype)  # [B·H·N, N] attention rows
    g = torch.randn_like(x)
    fns = candidates(device, gpu)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for name, fn in fns.items():  # warm-up (compiles kernels, first-touch allocations)
        fwd_bwd(fn, x, g)
        fwd_bwd(fn, x, g)
    for _ in range(repeats):  # interleaved rounds: drift hits every candidate alike
        for name, fn in fns.items():
            times[name].append(fwd_bwd(fn, x, g))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torch.softmax"]
    lines = [
        f"\n### N={n}, rows={bh}x{n}={bh * n}, device={device}, dtype={str(dtype)[6:]}, "
        f"scores ~ N(0, {scale}^2), median of {repeats}",
        "",
        "| normalizer | fwd+bwd ms | / torch.softmax | / entmax package |"
        + (" GPU target | parity vs package (fwd / bwd) |" if gpu else ""),
        "|---|---|---|---|" + ("---|---|" if gpu else ""),
    ]
    met = []
    for name, t in med.items():
        peer = PACKAGE_PEER.get(name)
        vs_pkg = f"{t / med[peer]:.2f}x ({med[peer] / t:.1f}x faster)" if peer in med else ""
        row = f"| {name} | {t * 1e3:.2f} | {t / base:.2f}x | {vs_pkg} |"
        if gpu:
            target = TARGETS.get(name)
            verdict = "" if target is None else f"<= {target:g}x: {'met' if t / base <= target else 'MISSED'}"
            if target is not None:
                met.append(t / base <= target)
            check = parity(fns[name], fns[peer], x, g) if peer in fns else ""
            row += f" {verdict} | {check} |"
        lines.append(row)
    if met:
        lines += ["", f"GPU targets met: {sum(met)}/{len(met)}"]
    return lines


def profile_host(names: list[str], n: int, bh: int, device: str, calls: int = 100) -> None:
    """cProfile of ``calls`` fwd+bwd calls of each named candidate (where host time goes)."""
    import cProfile
    import pstats

    x = torch.randn(bh * n, n, device=device)  # [B·H·N, N]
    g = torch.randn_like(x)
    fns = candidates(device)
    for name in names:
        if name not in fns:
            sys.exit(f"--profile: unknown candidate {name!r}; one of: {', '.join(fns)}")
        for _ in range(3):
            fwd_bwd(fns[name], x, g)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            fwd_bwd(fns[name], x, g)
        prof.disable()
        print(f"\n# {name}: Python profile of {calls} fwd+bwd calls, N={n}, rows={bh * n} "
              "(top 25 by own time)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=None,
                        help="sequence lengths (default: 197 1024 on CPU, 197 1024 4096 on CUDA)")
    parser.add_argument("--bh", type=int, default=None, help="batch x heads (default: 8 CPU, 16 CUDA)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default: 7 CPU, 20 CUDA)")
    parser.add_argument("--scale", type=float, default=1.0, help="std of the scores")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", nargs="+", metavar="NAME",
                        help="instead of the table: cProfile these candidates at the first --n")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here; run this on a GPU machine "
                 "(or use --device cpu)")
    n_list = args.n or ([197, 1024, 4096] if gpu else [197, 1024])
    bh = args.bh or (16 if gpu else 8)
    repeats = args.repeats or (20 if gpu else 7)
    dtype = getattr(torch, args.dtype)
    info = f"torch {torch.__version__}, threads={torch.get_num_threads()}"
    if gpu:
        import triton
        info += f", triton {triton.__version__}, {torch.cuda.get_device_name()}"
    print(info)
    if args.profile:
        profile_host(args.profile, n_list[0], bh, args.device)
        return
    for n in n_list:
        print("\n".join(bench(n, bh, args.device, repeats, args.scale, dtype)), flush=True)


if __name__ == "__main__":
    main()
