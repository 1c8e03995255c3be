"""Programs per second when a block's same-shape rows sit side by side (stacks are views) against copying them per
program, on NAS-Bench-201 search cells with sketches and slices (the 10,000-program runs' settings).

    OMP_NUM_THREADS=1 python3 benchmarks/shared_rows.py --cache-root "$EMQ_CACHE_DIR" --max-search 256 --programs 80

The evaluator stacks the columns of one shape for every program and block
(`emq.evaluate._column_terms`). Before, each stack was a `torch.cat` of the columns'
tensors, made again for every program, and the stacking groups were worked out again
for every program too; a worker profile of a 10,000-program NB201 run put about 22% of
its time there. Now a block keeps its columns' rows of one statistic, shape and dtype
in one tensor (`emq.stacked_stats.share_rows`), so a stack is a view (`concat_rows`),
and it keeps its groups. This script evaluates the same seeded random programs (the
search's grammar; plus the three study-10k winners) both ways on the same cells, one
process and one torch thread, alternating the order, and checks the scores are
bit-identical. The "copies" mode is the old evaluator, restored by swapping those
functions.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import emq.evaluate as evaluate  # noqa: E402
import emq.stacked_stats as stacked_stats  # noqa: E402
from emq.evaluate import StackedStats, block_for, evaluate_stacked  # noqa: E402
from emq.proxy import Proxy  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.generate import Grammar, GrowConfig, random_program  # noqa: E402
from search.operators import program  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from sketch_speed import search_source  # noqa: E402  (the search split, read from the cache only)

WINNERS = [
    "sum_layers(s_add(eig_min(corrcoef(softmax_last(mul(params, grad)))), l2_per_numel(l2_normalize(grad))))",
    "n_mul(n_sqrt(sum_layers(s_reciprocal(mean_abs(params)))), sum_layers(s_square(l1(l2_normalize(square(grad))))))",
    "n_rank_add(sum_layers(std(log_softmax_last(zscore(exp(grad))))), "
    "sum_layers(s_abs(l1_per_numel(zscore(exp(grad))))))",
]


class Copies:
    """The evaluator before shared rows: each stack a fresh torch.cat, groups worked out for every program."""

    def __enter__(self) -> "Copies":
        self.saved = (stacked_stats.share_rows, evaluate.concat_rows, evaluate._shape_groups)
        grouping = evaluate._shape_groups

        def regroup(blk, *args):
            blk.groups.clear()
            return grouping(blk, *args)

        stacked_stats.share_rows = lambda per_column: [dict(d) for d in per_column]
        evaluate.concat_rows = lambda parts: torch.cat(list(parts))
        evaluate._shape_groups = regroup
        return self

    def __exit__(self, *exc) -> None:
        stacked_stats.share_rows, evaluate.concat_rows, evaluate._shape_groups = self.saved


def stacks(stats_lists, sketch: int):
    """Return the pieces stacked (with the current `share_rows`) and read through K-entry sketches and slices."""
    return [(a, StackedStats(s, block=len(s)).with_sketch(sketch, True)) for a, s in stats_lists]


def timed(pieces, n: int, programs: list[Proxy]) -> tuple[np.ndarray, float]:
    scores = np.full((len(programs), n), np.nan)
    start = time.perf_counter()
    for i, p in enumerate(programs):
        for offset, stack in pieces:
            scores[i, offset: offset + stack.n] = evaluate_stacked(p, stack)[0]
    return scores, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stats", default="weight,grad,virtual_grad,params,flops")
    ap.add_argument("--max-search", type=int, default=256)
    ap.add_argument("--programs", type=int, default=80)
    ap.add_argument("--sketch", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="passes of each mode, alternating")
    ap.add_argument("--cache-root", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    stats = tuple(args.stats.split(","))
    _, source = search_source("nas-bench-201", stats, args.max_search, args.cache_root)
    n, block = source.n, block_for(source.n)
    lists = [(a, source.part(a, min(n, a + block)).load()) for a in range(0, n, block)]
    cfg = SearchConfig()
    rng = random.Random(args.seed)
    grammar = Grammar(list(stats), GrowConfig(cfg.max_depth, cfg.max_size))
    programs = [program(random_program(rng, grammar)) for _ in range(args.programs)]
    programs += [Proxy.from_formula(f) for f in WINNERS]
    rows, results = [], {}
    with torch.no_grad():
        shared = stacks(lists, args.sketch)
        with Copies():
            copied = stacks(lists, args.sketch)
        for rep in range(args.repeats):
            for mode in (("shared rows", "copies") if rep % 2 == 0 else ("copies", "shared rows")):
                if mode == "copies":
                    with Copies():
                        scores, seconds = timed(copied, n, programs)
                else:
                    scores, seconds = timed(shared, n, programs)
                results.setdefault(mode, scores)
                rows.append((rep + 1, mode, seconds))
    same = np.array_equal(results["shared rows"], results["copies"], equal_nan=True)
    print(f"nas-bench-201: {n} search cells (block {block}), {len(programs)} programs ({args.programs} random, seed "
          f"{args.seed}, and the 3 study-10k winners), sketch {args.sketch} + slices; one process, one torch thread")
    print("| pass | mode | seconds | programs/s |\n|---|---|---:|---:|")
    for rep, mode, seconds in rows:
        print(f"| {rep} | {mode} | {seconds:.1f} | {len(programs) / seconds:.2f} |")
    total = {m: sum(s for _, mode, s in rows if mode == m) for m in ("shared rows", "copies")}
    print(f"\nshared rows / copies: {total['copies'] / total['shared rows']:.2f}x; scores bit-identical: "
          f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
