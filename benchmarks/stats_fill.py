"""Time to fill the statistics cache of NAS-Bench-201 cells: one process vs `fill_cache`'s worker processes.

Usage: python benchmarks/stats_fill.py [CELLS] [WORKERS]   (defaults: 64 cells, 2 workers)

Draws CELLS cells uniformly (seed 0), computes the search's default statistics
(weight, grad, virtual_grad, params, flops; batch 16) into two fresh temporary caches,
serially (`load_or_compute`) and with `fill_cache` in
WORKERS processes, checks the files are byte-identical (checksums) and prints the wall
seconds of each and their ratio, measured in this one run.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from emq.bench.registry import open_benchmark
from emq.stats.cache import cache_folder, load_or_compute
from emq.stats.config import StatsConfig
from emq.stats.fill import fill_cache

STATS = ("weight", "grad", "virtual_grad", "params", "flops")


def main(cells: int = 64, workers: int = 2) -> None:
    bench = open_benchmark("nas-bench-201", None)
    candidates = bench.candidates()
    picks = [candidates[int(i)] for i in np.random.default_rng(0).choice(len(candidates), size=cells, replace=False)]
    config = StatsConfig(stat_names=STATS)
    with tempfile.TemporaryDirectory() as tmp:
        serial_root, parallel_root = Path(tmp) / "serial", Path(tmp) / "parallel"
        start = time.perf_counter()
        load_or_compute(bench, picks, config, progress=False, cache_root=serial_root)
        serial = time.perf_counter() - start
        start = time.perf_counter()
        fill_cache(bench, picks, config, workers, parallel_root, progress=False)
        load_or_compute(bench, picks, config, progress=False, cache_root=parallel_root)
        parallel = time.perf_counter() - start
        same = all(torch.load(a, weights_only=True)["checksum"] == torch.load(b, weights_only=True)["checksum"]
                   for a, b in zip(sorted(cache_folder(bench, config, serial_root).glob("*.pt")),
                                   sorted(cache_folder(bench, config, parallel_root).glob("*.pt"))))
    print(f"NAS-Bench-201, {cells} uniformly drawn cells, statistics {','.join(STATS)}, batch 16; "
          "one torch thread per process (emq.threads); run it on an otherwise idle machine\n")
    print("| fill | wall s | s per cell | speed-up |")
    print("|---|---|---|---|")
    print(f"| one process | {serial:.1f} | {serial / cells:.3f} | 1.00x |")
    print(f"| {workers} worker processes | {parallel:.1f} | {parallel / cells:.3f} | {serial / parallel:.2f}x |")
    print(f"\nfiles byte-identical (checksums): {same}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
