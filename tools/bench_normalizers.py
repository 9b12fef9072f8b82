"""Forward+backward time of every normalizer vs torch.softmax and the entmax package.

All candidates run on the same tensors, interleaved round by round, and the
table reports each one's median time as a ratio to torch.softmax (and, for the
sparse ones, to the entmax package's function). Shapes are attention-like:
``(B·H·N, N)`` rows.

    python tools/bench_normalizers.py                 # CPU, N = 197 and 1024
    python tools/bench_normalizers.py --n 197 --bh 4 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mmkit.normalizers import build_normalizer

try:
    import entmax as entmax_pkg
except ImportError:  # the dev extra installs it
    entmax_pkg = None


def candidates(device: str) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    mm = build_normalizer("multimax").to(device)
    mm_ref = build_normalizer("multimax", fused=False).to(device)
    mm_ref.load_state_dict(mm.state_dict())
    table = {
        "torch.softmax": lambda x: torch.softmax(x, -1),
        "mmkit softmax": build_normalizer("softmax").to(device),
        "mmkit multimax": mm,
        "mmkit multimax (unfused eager)": mm_ref,
        "mmkit evsoftmax": build_normalizer("evsoftmax").to(device),
        "mmkit sparsemax": build_normalizer("sparsemax").to(device),
        "mmkit entmax15": build_normalizer("entmax15").to(device),
        "mmkit entmax a=1.5": build_normalizer("entmax", alpha=1.5).to(device),
        "mmkit entmax a=1.3": build_normalizer("entmax", alpha=1.3).to(device),
    }
    if entmax_pkg is not None:
        table |= {
            "entmax.sparsemax": lambda x: entmax_pkg.sparsemax(x, -1),
            "entmax.entmax15": lambda x: entmax_pkg.entmax15(x, -1),
            "entmax.entmax_bisect a=1.5": lambda x: entmax_pkg.entmax_bisect(x, 1.5, -1),
            "entmax.entmax_bisect a=1.3": lambda x: entmax_pkg.entmax_bisect(x, 1.3, -1),
        }
    return table


#: Which entmax-package function each of ours is compared with.
PACKAGE_PEER = {
    "mmkit sparsemax": "entmax.sparsemax",
    "mmkit entmax15": "entmax.entmax15",
    "mmkit entmax a=1.5": "entmax.entmax_bisect a=1.5",
    "mmkit entmax a=1.3": "entmax.entmax_bisect a=1.3",
}


def fwd_bwd(fn, x: torch.Tensor, g: torch.Tensor) -> float:
    x = x.detach().requires_grad_()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(x).backward(g)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(n: int, bh: int, device: str, repeats: int, scale: float) -> list[str]:
    x = torch.randn(bh * n, n, device=device) * scale  # [B·H·N, N] attention rows
    g = torch.randn_like(x)
    fns = candidates(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for name, fn in fns.items():  # warm-up (and first-touch allocations)
        fwd_bwd(fn, x, g)
    for _ in range(repeats):  # interleaved rounds: drift hits every candidate alike
        for name, fn in fns.items():
            times[name].append(fwd_bwd(fn, x, g))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torch.softmax"]
    lines = [
        f"\n### N={n}, rows={bh}x{n}={bh * n}, device={device}, scores ~ N(0, {scale}^2), "
        f"median of {repeats}",
        "",
        "| normalizer | fwd+bwd ms | / torch.softmax | / entmax package |",
        "|---|---|---|---|",
    ]
    for name, t in med.items():
        peer = PACKAGE_PEER.get(name)
        vs_pkg = f"{t / med[peer]:.2f}x ({med[peer] / t:.1f}x faster)" if peer in med else ""
        lines.append(f"| {name} | {t * 1e3:.1f} | {t / base:.2f}x | {vs_pkg} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[197, 1024], help="sequence lengths")
    parser.add_argument("--bh", type=int, default=8, help="batch x heads")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="std of the scores")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}")
    for n in args.n:
        print("\n".join(bench(n, args.bh, args.device, args.repeats, args.scale)), flush=True)


if __name__ == "__main__":
    main()
