"""How many Hutchinson samples HAWQ-v2's per-layer Hessian traces need on an MQ benchmark's network.

Prints a markdown table: each layer's average trace Tr(H_l)/n_l after 8 .. N samples and the
relative change from N/2 to N samples, plus Kendall tau between the layer orderings at 64 and
N samples (HAWQ-v2 only needs the traces' order and scale to be stable).

    python benchmarks/hawq_v2_convergence.py mq-digits --samples 256
"""
from __future__ import annotations

import argparse

from scipy.stats import kendalltau

from emq.bench.registry import get_benchmark
from emq.stats.hessian_trace import hessian_traces
from emq.quant.layers import quantizable_layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", nargs="?", default="mq-digits")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    bench = get_benchmark(args.benchmark)
    model = bench.build_model(bench.candidates()[0])
    batch = bench.batch(args.batch_seed, args.batch_size)
    sizes = {n: m.weight.numel() for n, m in quantizable_layers(model).items()}
    running = hessian_traces(model, batch.inputs, batch.labels, args.samples, args.batch_seed)
    checkpoints = [k for k in (8, 16, 32, 64, 128, 256, 512, 1024) if k <= args.samples]
    print(f"HAWQ-v2 average Hessian traces on `{args.benchmark}` (batch {batch.source} seed {batch.seed} "
          f"size {args.batch_size}); command: `python benchmarks/hawq_v2_convergence.py {args.benchmark} "
          f"--samples {args.samples}`\n")
    print("| layer | " + " | ".join(f"{k} samples" for k in checkpoints) + f" | change {args.samples // 2}->{args.samples} |")
    print("|---|" + "---|" * (len(checkpoints) + 1))
    for name, values in running.items():
        cells = [f"{values[k - 1] / sizes[name]:.3e}" for k in checkpoints]
        half, full = values[args.samples // 2 - 1], values[-1]
        print(f"| `{name}` | " + " | ".join(cells) + f" | {abs(full - half) / max(abs(full), 1e-30):.1%} |")
    at64 = [running[n][min(63, args.samples - 1)] / sizes[n] for n in running]
    final = [running[n][-1] / sizes[n] for n in running]
    print(f"\nKendall tau between the layer orderings at 64 and {args.samples} samples: "
          f"{kendalltau(at64, final).statistic:+.3f}")


if __name__ == "__main__":
    main()
