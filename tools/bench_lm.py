"""Training throughput (tokens/s) of the Transformer-XL LM with each normalizer.

Every normalizer runs the same model size and batches, interleaved round by round
(forward with memory, output-normalizer loss, backward, AdamW step), and the table
reports the median tokens/s and the ratio to SoftMax, measured side by side.

    python tools/bench_lm.py                       # preset small, 16 streams x 64 tokens
    python tools/bench_lm.py --preset test --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmkit.models import TransformerXL
from mmkit.normalizers import GRID_NORMALIZERS

NORMALIZERS = list(GRID_NORMALIZERS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tgt-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and normalizer")
    args = parser.parse_args()
    torch.manual_seed(0)
    runs = {}
    for name in NORMALIZERS:
        model = TransformerXL(args.vocab, args.preset, normalizer=name, output_normalizer=name,
                              tgt_len=args.tgt_len, mem_len=args.tgt_len)
        runs[name] = [model, torch.optim.AdamW(model.parameters(), lr=1e-4), None, []]
    tokens = torch.randint(0, args.vocab, (args.batch, args.tgt_len + 1))
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, run in runs.items():
            model, opt, mems, times = run
            start = time.perf_counter()
            for _ in range(args.steps):
                logits, mems = model(tokens[:, :-1], mems)
                loss = model.output_normalizer.loss(logits, tokens[:, 1:])
                opt.zero_grad()
                loss.backward()
                opt.step()
            times.append((time.perf_counter() - start) / args.steps)
            run[2] = mems
    per_step = args.batch * args.tgt_len
    base = statistics.median(runs["softmax"][3][1:])
    print(f"Transformer-XL {args.preset}, {args.batch} streams x {args.tgt_len} tokens, "
          f"vocab {args.vocab}, {torch.get_num_threads()} threads")
    print("| normalizer | tokens/s | step time / softmax |\n|---|---|---|")
    for name, (_, _, _, times) in runs.items():
        t = statistics.median(times[1:])
        print(f"| {name} | {per_step / t:,.0f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
