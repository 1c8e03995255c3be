"""Compare NAS-Bench-201's offline input batches by the batch-dependent baselines' held-out rank correlations.

CIFAR-10 is not offline, so the benchmark offers three stand-in batches (`--batch-source`):
photo crops bundled in scikit-learn, the digits upsampled to 32x32x3, and Gaussian noise.
Each batch-dependent baseline is scored on the same held-out cells under each source, and
the sources are compared pairwise on the same cells (paired bootstrap of the Kendall
difference), so the default is chosen on evidence rather than taste.

    python results/nas-bench-201/compare_batch_sources.py --limit 500 \
        --out results/nas-bench-201/batch-sources-500.md
"""
from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np

from emq.atomic import write_text_atomic
from emq.baselines import baseline_scores
from emq.bench.nb201 import NB201Benchmark
from emq.fitness import bootstrap_interval, kendall, paired_bootstrap_difference, spearman
from emq.scoring import select_split
from emq.stats.config import StatsConfig

SOURCES = ("photos", "digits", "gaussian")
#: Baselines whose value depends on the batch's images or labels (SynFlow, #params and Zen-score do not).
BATCH_DEPENDENT = ("nwot", "jacov", "snip", "grad_norm", "fisher")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500, help="first N cells of the held-out split")
    parser.add_argument("--baselines", default=",".join(BATCH_DEPENDENT))
    parser.add_argument("--batch-seed", type=int, default=0)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    names = args.baselines.split(",")
    config = StatsConfig(stat_names=("weight", "grad", "params", "flops"), batch_seed=args.batch_seed, device="cpu")
    scores: dict[str, dict[str, np.ndarray]] = {}
    truth = None
    seconds = {}
    for source in SOURCES:
        bench = NB201Benchmark(batch_source=source)
        idx = select_split(bench, "heldout")[: args.limit]
        cands = [bench.candidates()[i] for i in idx]
        truth = bench.ground_truth()["fp_acc"][idx]
        start = time.perf_counter()
        scores[source] = baseline_scores(bench, names, config, progress=True, candidates=cands)
        seconds[source] = time.perf_counter() - start
    assert truth is not None
    lines = ["# NAS-Bench-201: which offline input batch? (fp_acc, held-out cells)", "",
             f"The first {args.limit} cells of the held-out split (split seed 0), batch seed {args.batch_seed}, "
             "batch size 16, init seed 0; ground truth analog-nasbench 0.1.3 `fp_acc`. Produced by:", "",
             f"    python results/nas-bench-201/compare_batch_sources.py --limit {args.limit} --out {args.out}", "",
             "## Kendall [95% bootstrap CI] (Spearman) per batch source", "",
             "| baseline | " + " | ".join(SOURCES) + " |", "|---|" + "---|" * len(SOURCES)]
    for name in names:
        cells = []
        for source in SOURCES:
            s = scores[source][name]
            lo, hi = bootstrap_interval(s, truth, kendall, args.n_boot)
            cells.append(f"{kendall(s, truth):+.3f} [{lo:+.3f}, {hi:+.3f}] ({spearman(s, truth):+.3f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired differences (Kendall of the first source minus the second, same cells)", "",
              "| baseline | " + " | ".join(f"{a} - {b}" for a, b in itertools.combinations(SOURCES, 2)) + " |",
              "|---|" + "---|" * 3]
    for name in names:
        cells = []
        for a, b in itertools.combinations(SOURCES, 2):
            d = paired_bootstrap_difference(scores[a][name], scores[b][name], {"fp_acc": truth}, kendall,
                                            n_boot=args.n_boot)
            cells.append(f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Wall time per source (statistics + baselines, 2 shared CPU cores): "
              + ", ".join(f"{s} {seconds[s]:.0f} s" for s in SOURCES) + ".", ""]
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
