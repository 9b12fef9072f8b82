"""LM head fwd+bwd side by side: unfused softmax CE / MultiMax (eager, compiled) vs the fused chunked head.

Every candidate computes ``loss(hidden @ W.T + b, target)`` and its gradients with
respect to hidden, W, b and the normalizer's parameters, on the same tensors. Before
timing, each candidate's gradients are compared with its unfused eager reference.
Times are medians over interleaved rounds; memory (CUDA only) is the peak allocated
during one fwd+bwd minus what was allocated before it (inputs and parameters), so it
counts the activations, temporaries and the returned gradients.

    python tools/bench_lm_head.py                          # CUDA, T=8192 D=512 V=32000, bf16
    python tools/bench_lm_head.py --device cpu --tokens 512 --vocab 4096 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.nn.lm_head import fused_linear_cross_entropy
from mmkit.normalizers import MultiMax, Normalizer, SoftMax

LossFn = Callable[[Tensor, Tensor, Tensor | None, Tensor], Tensor]
UNFUSED_MM, SOFTMAX_CE = "MultiMax (unfused eager)", "softmax CE (unfused)"
MEMORY_TARGET, TIME_TARGET = 0.25, 1.0


def candidates(mm: MultiMax, sm: SoftMax, chunk_size: int, use_compile: bool
               ) -> dict[str, tuple[LossFn, str, Normalizer]]:
    """name -> (loss function, name of its reference, its normalizer)."""
    def unfused(norm: Normalizer) -> LossFn:
        return lambda h, w, b, t: norm.loss(F.linear(h, w, b), t)

    def fused(norm: Normalizer) -> LossFn:
        return lambda h, w, b, t: fused_linear_cross_entropy(h, w, b, t, norm, chunk_size=chunk_size,
                                                             compile=use_compile)

    table = {SOFTMAX_CE: (unfused(sm), SOFTMAX_CE, sm), UNFUSED_MM: (unfused(mm), UNFUSED_MM, mm)}
    if use_compile:
        table["MultiMax (unfused, torch.compile)"] = (torch.compile(unfused(mm)), UNFUSED_MM, mm)
    table["fused chunked MultiMax"] = (fused(mm), UNFUSED_MM, mm)
    table["fused chunked SoftMax"] = (fused(sm), SOFTMAX_CE, sm)
    return table


def grads(fn: LossFn, norm: Normalizer, h: Tensor, w: Tensor, b: Tensor, t: Tensor) -> list[Tensor]:
    loss = fn(h, w, b, t)
    return [loss.detach(), *torch.autograd.grad(loss, [h, w, b, *norm.parameters()])]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(fn: LossFn, norm: Normalizer, h: Tensor, w: Tensor, b: Tensor, t: Tensor,
            device: str) -> tuple[float, float | None]:
    """Seconds and (CUDA) peak extra bytes of one forward + backward."""
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    out = grads(fn, norm, h, w, b, t)
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - before if device == "cuda" else None
    del out
    return seconds, peak


def ratio(x: float | None, base: float | None) -> str:
    return "n/a" if x is None or not base else f"{x / base:.2f}x"


def main(argv: Sequence[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="T (tokens per step)")
    parser.add_argument("--dim", type=int, default=512, help="D (hidden size)")
    parser.add_argument("--vocab", type=int, default=32000, help="V (vocabulary size)")
    parser.add_argument("--chunk-size", type=int, default=2048, help="tokens per chunk of the fused head")
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (median reported)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                        help="matmul input dtype (default: bf16 on CUDA, fp32 on CPU); logits are fp32")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile rows and the fused per-chunk math (default: on CUDA only)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available. For a CPU smoke run use small sizes, e.g.\n"
                         "  python tools/bench_lm_head.py --device cpu --tokens 512 --vocab 4096 --repeats 3")
    dev = args.device
    use_compile = dev == "cuda" if args.compile is None else args.compile
    dtype_name = args.dtype or ("bf16" if dev == "cuda" else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]

    torch.manual_seed(0)
    mm, sm = MultiMax().to(dev), SoftMax().to(dev)
    with torch.no_grad():  # a non-trivial SegLU, so every piece and gradient is exercised
        mm.ranges.uniform_(-1.0, 1.0)
        mm.ts.uniform_(-0.5, 0.5)
    h = torch.randn(args.tokens, args.dim, device=dev, dtype=dtype, requires_grad=True)  # [T, D]
    w = (torch.randn(args.vocab, args.dim, device=dev) * args.dim ** -0.5).to(dtype).requires_grad_()
    b = torch.zeros(args.vocab, device=dev, dtype=dtype, requires_grad=True)  # [V]
    t = torch.randint(0, args.vocab, (args.tokens,), device=dev)  # [T]
    fns = candidates(mm, sm, args.chunk_size, use_compile)

    refs = {name: grads(fns[name][0], fns[name][2], h, w, b, t) for name in (SOFTMAX_CE, UNFUSED_MM)}
    diffs: dict[str, str] = {}
    for name, (fn, ref_name, norm) in fns.items():
        got, ref = grads(fn, norm, h, w, b, t), refs[ref_name]
        worst = max(float((g.float() - r.float()).abs().max()) for g, r in zip(got[1:], ref[1:]))
        scale = max(float(r.float().abs().max()) for r in ref[1:])
        diffs[name] = f"{worst:.1e} (rel {worst / scale:.1e}), loss diff {float(got[0] - ref[0]):.1e}"
        fwd_bwd(fn, norm, h, w, b, t, dev)  # second warm-up: compiles every chunk shape
    times: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, float | None] = {}
    for _ in range(args.repeats):  # interleaved rounds: drift hits every candidate alike
        for name, (fn, _, norm) in fns.items():
            seconds, peaks[name] = fwd_bwd(fn, norm, h, w, b, t, dev)
            times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}

    name_dev = torch.cuda.get_device_name() if dev == "cuda" else "CPU"
    lines = [f"torch {torch.__version__}, {name_dev}, T={args.tokens} D={args.dim} V={args.vocab}, "
             f"{dtype} matmul inputs, fp32 logits, chunk {args.chunk_size}, compile={use_compile}, "
             f"median of {args.repeats}", "",
             "| path | fwd+bwd ms | / MultiMax unfused | / softmax CE | peak extra MiB | "
             "mem / MultiMax unfused | mem / softmax CE | max abs grad diff vs unfused |",
             "|---|---|---|---|---|---|---|---|"]
    for name in fns:
        mib = "n/a (CPU)" if peaks[name] is None else f"{peaks[name] / 2**20:.0f}"
        lines.append(f"| {name} | {med[name] * 1e3:.2f} | {ratio(med[name], med[UNFUSED_MM])} | "
                     f"{ratio(med[name], med[SOFTMAX_CE])} | {mib} | {ratio(peaks[name], peaks[UNFUSED_MM])} "
                     f"| {ratio(peaks[name], peaks[SOFTMAX_CE])} | {diffs[name]} |")
    lines.append("")
    fused = "fused chunked MultiMax"
    for base in (UNFUSED_MM, "MultiMax (unfused, torch.compile)"):
        if base not in fns:
            continue
        t_ratio = med[fused] / med[base]
        verdict = f"targets vs {base}: time {t_ratio:.2f}x (<= {TIME_TARGET}x: " \
                  f"{'PASS' if t_ratio <= TIME_TARGET else 'FAIL'})"
        if peaks[fused] is not None:
            m_ratio = peaks[fused] / peaks[base]
            verdict += f", peak memory {m_ratio:.2f}x (<= {MEMORY_TARGET}x: " \
                       f"{'PASS' if m_ratio <= MEMORY_TARGET else 'FAIL'})"
        else:
            verdict += ", peak memory not measured on CPU"
        lines.append(verdict)
    print("\n".join(lines), flush=True)
    return lines


if __name__ == "__main__":
    main()
