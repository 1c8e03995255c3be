"""Kernel statistics on 16 or 64 images: each known proxy's held-out Kendall at both batch sizes, on the same cells.

Issue 24 asks, before the long runs, whether the batch-dependent statistics (NASWOT's
codes kernel, MeCo's channel correlation, AZ-NAS's covariance spectrum, SWAP's patterns,
ZiCo's mini-batch gradient moments, jacov's Jacobian correlation) rank better on 64 images
than on 16. The batch-16 values are the library's committed chunk files; the batch-64
values an `emq score --batch-size 64` table on the first cells of the same uniform held-out
list (same batch seed, same init seed). Per program: Kendall at each size and the paired
bootstrap of the difference (64 minus 16) over those cells. Rank aggregates (AZ-NAS) are
ranked over the compared cells on both sides.

    EMQ_CACHE_DIR=/path/to/cache emq score nas-bench-201 --proxy known:naswot,meco,zico,swap,az_expressivity,az_nas,jacov \\
        --split heldout --limit 300 --batch-size 64 --stats act_codes_kernel,act_channel_corr,act_channel_cov,\\
act_sign_patterns,jacobian_corr,grad_batch_mean,grad_batch_std,flops --targets fp_acc,ptq_acc \\
        --out results/nas-bench-201/batch-size-64-300.md
    python3 results/nas-bench-201/batch_size.py results/nas-bench-201/batch-size-64-300.scores.csv \\
        results/known-proxies-nb201 --out results/nas-bench-201/batch-size-16-vs-64.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, when run as a script

import numpy as np  # noqa: E402

from results.report import publish, reproduce_line  # noqa: E402
from emq.fitness import kendall, paired_bootstrap_difference  # noqa: E402
from emq.known_scores import KNOWN_PREFIX, KnownScores  # noqa: E402
from emq.score_table import ScoreTable  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path, help="the batch-64 table's per-candidate file (emq score --out's .scores.csv)")
    parser.add_argument("chunks", type=Path, help="the library's batch-16 chunk files on the same split")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    large = ScoreTable.read(args.scores)
    small = KnownScores.read([args.chunks])
    cells = large.candidates
    size = large.meta["batch"]["size"]
    if small.batch["seed"] != large.meta["batch"]["seed"] or small.batch["source"] != large.meta["batch"]["source"]:
        raise SystemExit(f"{args.scores} and {args.chunks} were computed on other batch seeds or sources")
    names = [n for n in large.meta["proxies"] if KNOWN_PREFIX + n in small.names()]
    at_16 = small.values(cells, [KNOWN_PREFIX + n for n in names])
    command = f"python3 results/nas-bench-201/batch_size.py {args.scores} {args.chunks}"
    lines = [f"# Kernel statistics on {small.batch['size']} or {size} images: {len(cells)} uniform held-out NB201 "
             "cells", "", reproduce_line(command, args.out), "",
             f"Batch {small.batch['size']}: the library's chunk files `{args.chunks}`; batch {size}: `{args.scores}` "
             f"(its command: `{large.meta.get('command', '?')}`). Both batch seed {small.batch['seed']}, source "
             f"`{small.batch['source']}`, init seed 0, randomly initialised networks. Difference: Kendall at "
             f"{size} minus Kendall at {small.batch['size']}, paired bootstrap 95% CI over the cells (1,000 "
             "resamples).", ""]
    for target in large.truth:
        truth = large.truth[target]
        if not np.allclose(small.truth_on(cells, target), truth, equal_nan=True):
            raise SystemExit(f"{args.scores} and {args.chunks} disagree on the truth `{target}` of their cells")
        lines += [f"## `{target}`", "", f"| program | Kendall, {small.batch['size']} images | Kendall, {size} images "
                  f"| {size} minus {small.batch['size']} [95% paired CI] | Kendall between the two |",
                  "|---|---|---|---|---|"]
        for name in names:
            a, b = at_16[KNOWN_PREFIX + name], large.scores[name]
            d = paired_bootstrap_difference(b, a, {target: truth})
            lines.append(f"| {name} | {kendall(a, truth):+.3f} | {kendall(b, truth):+.3f} | "
                         f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | {kendall(a, b):+.3f} |")
        lines.append("")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
