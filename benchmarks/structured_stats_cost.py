"""Memory and time per NAS-Bench-201 candidate of each structured statistic (emq/stats/structured.py).

Usage: python benchmarks/structured_stats_cost.py [CELLS] [BATCH,...]   (defaults: 40 cells, batches 16,64)

Draws CELLS cells uniformly (seed 0) from the 15,625, computes each structured
statistic alone (a statistics pass of its own: the time includes the network copy and
the pass it needs) and reports the mean and largest stored bytes and the mean seconds
per candidate, on this machine's torch threads (set OMP_NUM_THREADS). Prints a markdown
table.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from emq.bench.registry import open_benchmark
from emq.stats.compute import compute_stats
from emq.stats.structured import STRUCTURED_STATS


def main(cells: int = 40, batches: tuple[int, ...] = (16, 64)) -> None:
    bench = open_benchmark("nas-bench-201", None)
    candidates = bench.candidates()
    picks = np.random.default_rng(0).choice(len(candidates), size=cells, replace=False)
    print(f"NAS-Bench-201, {cells} uniformly drawn cells, {torch.get_num_threads()} torch thread(s)\n")
    print("| statistic | batch | bytes per candidate: mean / largest | seconds per candidate (alone) |")
    print("|---|---|---|---|")
    for batch_size in batches:
        batch = bench.batch(0, batch_size)
        for stat in STRUCTURED_STATS:
            sizes, seconds = [], []
            for i in picks:
                model = bench.build_model(candidates[int(i)], init_seed=0)
                start = time.perf_counter()
                stats = compute_stats(model, batch, None, (stat,), store_dtype=torch.float16)
                seconds.append(time.perf_counter() - start)
                sizes.append(sum(t.numel() * t.element_size() for d in stats.layers.values()
                                 for name, t in d.items() if name == stat))
            print(f"| `{stat}` | {batch_size} | {np.mean(sizes) / 1e3:,.0f} KB / {max(sizes) / 1e3:,.0f} KB | "
                  f"{np.mean(seconds):.2f} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40,
         tuple(int(b) for b in sys.argv[2].split(",")) if len(sys.argv) > 2 else (16, 64))
