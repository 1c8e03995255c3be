"""Kendall bootstrap intervals: one scipy call per resample against all resamples at once (emq.kendall_resamples).

Both paths give the same interval (tests/test_kendall_resamples.py); this measures the
ratio of their times in one run, at the candidate counts of the benchmarks: vit-digits
held out (64), AutoFormer (100), mq-digits search (160), and the fast path's limit (1000).

    python benchmarks/bootstrap_speed.py --n-boot 1000 --out bootstrap-speed.md
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from emq.fitness import bootstrap_interval, kendall, paired_bootstrap_difference


def per_resample(scores: np.ndarray, truth: np.ndarray) -> float:
    """Kendall through a wrapper, which keeps emq.fitness on its one-call-per-resample path."""
    return kendall(scores, truth)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,100,160,1000", help="candidate counts")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    rows = ["| n | call | per resample s | all at once s | speed-up | same interval |", "|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for n in (int(x) for x in args.sizes.split(",")):
        truth = rng.normal(size=n)
        a, b = truth + rng.normal(size=n), np.round(truth + 2 * rng.normal(size=n), 1)
        calls = {
            "bootstrap_interval": lambda metric: bootstrap_interval(a, truth, metric=metric, n_boot=args.n_boot),
            "paired_bootstrap_difference": lambda metric: paired_bootstrap_difference(
                a, b, {"t": truth}, metric=metric, n_boot=args.n_boot),
        }
        for name, call in calls.items():
            slow_s, slow = timed(lambda: call(per_resample))
            fast_s, fast = timed(lambda: call(kendall))
            rows.append(f"| {n} | `{name}` | {slow_s:.3f} | {fast_s:.4f} | {slow_s / fast_s:.0f}x | {slow == fast} |")
    text = "\n".join(rows + ["", f"{args.n_boot} resamples; one process, one run."]) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
