"""DeiT-S training-step time and peak memory on CUDA: SoftMax vs MultiMax (kernel / materialized).

Three copies of the mmkit ``VisionTransformer`` preset ``small`` (224 px, 16 px patches,
global average pooling, 1000 classes) train on one fixed random batch with bf16
autocast and AdamW (forward, backward, step):

* ``softmax``: SoftMax attention through SDPA (the baseline);
* ``multimax``: MultiMax attention through the Triton flash kernel;
* ``multimax-fused-bwd``: the same kernel with its one-pass backward
  (``mmkit.kernels.flash.use_fused_backward``);
* ``multimax-materialized``: MultiMax with the kernel disabled, scores materialized
  (what the upstream code does).

The variants run interleaved, round by round (the first round warms up and is
dropped); the table gives the median step time, the peak memory of a step (the
activations above everything resident, plus this variant's own parameters, gradients
and AdamW state), and the ratios to softmax with the targets (MultiMax ≤ 1.05x step
time, ≤ 1.1x memory). Needs CUDA.

    python tools/bench_step.py --batch-size 256 --steps 10
"""

from __future__ import annotations

import argparse
import statistics
import sys

VARIANTS = ("softmax", "multimax", "multimax-fused-bwd", "multimax-materialized")
TIME_TARGET, MEM_TARGET = 1.05, 1.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round and variant")
    p.add_argument("--rounds", type=int, default=3, help="rounds after the warm-up round")
    p.add_argument("--preset", default="small", help="ViT preset (DeiT-S = small)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    return p.parse_args(argv)


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_step.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "run it on a GPU machine.")


def resident_bytes(model, opt) -> int:
    """Parameters, gradients and optimizer state of one variant."""
    import torch

    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


class Variant:
    """One model + optimizer and its measurements."""

    def __init__(self, name: str, preset: str) -> None:
        import torch

        from mmkit.models import VisionTransformer

        torch.manual_seed(0)  # same initial weights for every variant
        normalizer = "softmax" if name == "softmax" else "multimax"
        self.name, self.fused = name, name != "multimax-materialized"
        self.fused_bwd = name == "multimax-fused-bwd"
        self.model = VisionTransformer(preset, normalizer=normalizer).cuda()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.times: list[float] = []
        self.peak = 0

    def step(self, images, labels) -> None:
        import torch
        import torch.nn.functional as F

        from mmkit.kernels.flash import use_fused_backward, use_multimax_kernel

        with use_multimax_kernel(self.fused), use_fused_backward(self.fused_bwd):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(self.model(images), labels)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        self.opt.step()

    def run(self, images, labels, steps: int, record: bool) -> None:
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            self.step(images, labels)
        end.record()
        torch.cuda.synchronize()
        if record:
            self.times.append(start.elapsed_time(end) / steps)
            extra = torch.cuda.max_memory_allocated() - base
            self.peak = max(self.peak, extra + resident_bytes(self.model, self.opt))


def kernel_in_use(batch: int, heads: int, tokens: int, head_dim: int) -> bool:
    """Whether ``attend`` would take the MultiMax kernel at this model's shapes."""
    import torch

    from mmkit.kernels.flash import multimax_attention
    from mmkit.normalizers import MultiMax

    q, k, v = (torch.randn(batch, heads, tokens, head_dim, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    norm = MultiMax().cuda()
    out = multimax_attention(q, k, v, norm.ranges, norm.ts, mask=None, causal=False, scale=head_dim**-0.5)
    return out is not None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_cuda()
    import torch

    variants = [Variant(name, args.preset) for name in args.variants]
    vit = variants[0].model
    tokens = (vit.img_size // vit.patch_size) ** 2
    heads, head_dim = vit.blocks[0].attn.num_heads, vit.blocks[0].attn.head_dim
    images = torch.randn(args.batch_size, 3, vit.img_size, vit.img_size, device="cuda")
    labels = torch.randint(0, vit.num_classes, (args.batch_size,), device="cuda")
    print(f"# bench_step on {torch.cuda.get_device_name()} (torch {torch.__version__}); "
          f"ViT-{args.preset}, batch {args.batch_size}, {tokens} tokens, bf16 autocast, AdamW; "
          f"command: {' '.join(sys.argv)}")
    print(f"MultiMax kernel used at [B={args.batch_size}, H={heads}, N={tokens}, d={head_dim}]: "
          f"{kernel_in_use(args.batch_size, heads, tokens, head_dim)}")
    for round_ in range(args.rounds + 1):  # round 0 warms up (autotuning, Triton compiles)
        for var in variants:
            try:
                var.run(images, labels, args.steps if round_ else 2, record=round_ > 0)
            except torch.cuda.OutOfMemoryError:
                var.times, var.peak = [], -1
                torch.cuda.empty_cache()
    base = next((v for v in variants if v.name == "softmax" and v.times), None)
    summary = []
    print("| variant | step ms | img/s | peak GiB | time / softmax | memory / softmax |")
    print("|---|---|---|---|---|---|")
    for var in variants:
        if not var.times:
            print(f"| {var.name} | OOM | | | | |")
            continue
        ms = statistics.median(var.times)
        row = f"| {var.name} | {ms:.1f} | {args.batch_size / ms * 1e3:,.0f} | {var.peak / 2**30:.2f} |"
        if base is None:
            print(row + " n/a | n/a |")
            continue
        t_ratio, m_ratio = ms / statistics.median(base.times), var.peak / base.peak
        print(row + f" {t_ratio:.2f}x | {m_ratio:.2f}x |")
        if var.name in ("multimax", "multimax-fused-bwd"):
            summary.append(f"{var.name} / softmax = {t_ratio:.2f}x step time (target ≤{TIME_TARGET}x: "
                           f"{'met' if t_ratio <= TIME_TARGET else 'NOT met'}), {m_ratio:.2f}x memory "
                           f"(target ≤{MEM_TARGET}x: {'met' if m_ratio <= MEM_TARGET else 'NOT met'})")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
