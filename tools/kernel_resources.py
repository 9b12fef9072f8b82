"""Registers and spills of the MultiMax flash kernels, compiled ahead of time (no GPU needed).

Compiles each kernel with Triton for a CUDA target (default sm_90, the H100) and runs
the ptxas bundled with Triton with ``-v`` on the PTX, then prints one row per kernel
and tile choice: registers per thread, spill stores/loads and shared memory. Spills
are a hint for choosing tiles before GPU time is spent; they are not a timing, and the
Triton version that compiles here may differ from the GPU machine's.

    python tools/kernel_resources.py                       # default tiles, d 64 and 128
    python tools/kernel_resources.py --head-dims 64 --sweep
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

#: Pointer arguments that are fp32 whatever the input dtype.
FP32_POINTERS = {"LSE", "DELTA", "DQACC", "PART", "PRM"}
POINTERS = {"Q", "K", "V", "DO", "OUT", "DQ", "DK", "DV", "MASK"} | FP32_POINTERS
SWEEP = [(32, 64, 4, 3), (32, 64, 8, 2), (16, 64, 4, 2), (16, 128, 8, 2), (32, 128, 8, 2),
         (64, 64, 8, 2)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90 = H100)")
    p.add_argument("--order", type=int, default=2, help="SegLU order")
    p.add_argument("--sweep", action="store_true",
                   help="also the one-pass backward at other (query, key, warps, stages) tiles")
    return p.parse_args(argv)


def signature(fn, constexprs: dict) -> dict[str, str]:
    """Triton argument types: bf16 tensors, fp32 buffers, uint8 mask, i64 strides."""
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in POINTERS:
            types[name] = "*fp32" if name in FP32_POINTERS else "*u8" if name == "MASK" else "*bf16"
        elif name in ("c", "ln2"):
            types[name] = "fp32"
        else:
            types[name] = "i64" if name.startswith("stride") else "i32"
    return types


def resources(fn, constexprs: dict, warps: int, stages: int, arch: int) -> str:
    """``regs N, spills S/L B, shared M B`` of one compiled variant (or why it failed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    try:
        src = ASTSource(fn=fn, signature=signature(fn, constexprs), constexprs=constexprs)
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": warps, "num_stages": stages})
    except Exception as err:  # out of shared memory, unsupported tile: reported per row
        return f"failed: {type(err).__name__}: {str(err).strip().splitlines()[0][:80]}"
    ptx = kernel.asm["ptx"]
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    target = re.search(r"\.target\s+(\S+)", ptx).group(1)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        res = subprocess.run([ptxas, f"-arch={target}", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True)
    log = res.stdout + res.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spills is None:
        return f"ptxas said: {log.strip()[:120]}"
    return (f"regs {regs.group(1)}, spills {spills.group(1)}/{spills.group(2)} B, "
            f"shared {kernel.metadata.shared} B")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import triton

    from mmkit.kernels.flash._bwd import mm_bwd_dkdv_kernel, mm_bwd_dq_kernel
    from mmkit.kernels.flash._bwd_fused import mm_bwd_fused_kernel
    from mmkit.kernels.flash._fwd import mm_fwd_kernel
    from mmkit.kernels.flash._launch import CUDA_CONFIGS

    order = args.order
    np_cols = triton.next_power_of_2(4 * order)
    partials = 1 if order <= 2 else 2
    print(f"# sm_{args.arch}, triton {triton.__version__}, bf16, SegLU order {order}, causal, "
          f"parameter gradients on; ptxas -v on the PTX")
    print("| kernel | d | (m, n, warps, stages) | resources |\n|---|---|---|---|")
    for d in args.head_dims:
        cfg = CUDA_CONFIGS[(True, d <= 64)]
        common = dict(HEAD_DIM=d, V_DIM=d, ORDER=order, CAUSAL=True, HAS_MASK=False, PRECISION="tf32")
        rows = [
            ("forward", mm_fwd_kernel, dict(BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n),
             cfg.fwd_warps, cfg.fwd_stages),
            ("dq", mm_bwd_dq_kernel, dict(BLOCK_M=cfg.dq_m, BLOCK_N=cfg.dq_n, NP=np_cols,
                                          PARTIALS=partials), cfg.bwd_warps, cfg.bwd_stages),
            ("dk/dv", mm_bwd_dkdv_kernel, dict(BLOCK_M=cfg.dkdv_m, BLOCK_N=cfg.dkdv_n),
             cfg.bwd_warps, cfg.bwd_stages),
        ]
        tiles = [(cfg.dkdv_m, cfg.dkdv_n, cfg.bwd_warps, cfg.bwd_stages)]
        if args.sweep:
            tiles += [t for t in SWEEP if t != tiles[0]]
        for m, n, warps, stages in tiles:
            rows.append(("one-pass backward", mm_bwd_fused_kernel,
                         dict(BLOCK_M=m, BLOCK_N=n, NP=np_cols, PARTIALS=partials, KEY_MASK=True),
                         warps, stages))
        for name, fn, extra, warps, stages in rows:
            tile = (extra["BLOCK_M"], extra["BLOCK_N"], warps, stages)
            info = resources(fn, {**common, **extra}, warps, stages, args.arch)
            print(f"| {name} | {d} | {tile} | {info} |", flush=True)


if __name__ == "__main__":
    main()
