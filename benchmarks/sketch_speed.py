"""Programs per second with sketched statistics (`--sketch K`, `--sketch-slices`) against full ones, and whether the
ranking survives.

    OMP_NUM_THREADS=1 python benchmarks/sketch_speed.py --cache-root "$EMQ_CACHE_DIR" --max-search 1000 --programs 50
    OMP_NUM_THREADS=1 python benchmarks/sketch_speed.py --cache-root "$EMQ_CACHE_DIR" --max-search 1000 \
        --programs 80 --sketches 1024 --slices

On one benchmark's search split (cut as `emq search` cuts it: split seed 0, hash order,
the first `--max-search` networks), read from an existing statistics cache (never
computed or written here: a missing file is an error), the same seeded random programs
(as the search's grammar grows them) are evaluated on the full statistics and on each
sketch size, one process and one torch thread, all in one run so the ratios compare
like with like. For each sketch it reports programs/s over all programs, over the
programs that read the sketch (the others read the full tensors: `emq.sketch`), the
share of those, the time to build the sketch once, and the Kendall tau between the
sketched and the full fitness (mean Kendall with the ground-truth columns, as the search's
default fitness) over the programs whose fitness is defined both ways. A program that
reads neither sketches nor slices runs the full evaluation's code path bit for bit, so it
is timed once, in the full pass, and that time counts again in every sketch's "all
programs" rate. With `--slices` each sketch size has a second row, with slices: there
the "readers" are the programs that read sketches or slices (`emq.evaluate.reading`).
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

from emq.evaluate import StackedStats, block_for, evaluate_stacked, reading  # noqa: E402
from emq.fitness import get_metric  # noqa: E402
from emq.proxy import Proxy  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.generate import Grammar, GrowConfig, random_program  # noqa: E402
from search.operators import program  # noqa: E402


def load_split(name: str, stats: tuple[str, ...], max_search: int, cache_root: str):
    """Return (search-split truth, stacked pieces of `block` networks, n) read from the cache's files only."""
    truth, source = search_source(name, stats, max_search, cache_root)
    block = block_for(source.n)
    pieces = [(a, StackedStats(source.part(a, min(source.n, a + block)).load(), block=block))
              for a in range(0, source.n, block)]
    return truth, pieces, source.n


def search_source(name: str, stats: tuple[str, ...], max_search: int, cache_root: str):
    """Return (search-split truth, a pool source over the split's cached statistics files; all must exist)."""
    from emq.bench.registry import open_benchmark
    from emq.stats.config import StatsConfig
    from search.benchmark_run import cache_source
    from search.protocol import cut_run

    bench = open_benchmark(name)
    search = SearchConfig()
    cut = cut_run(bench, list(bench.ground_truth()), search.heldout_fraction, search.split_seed, search.split_order,
                  max_search)
    source = cache_source(bench, cut.search, StatsConfig(stat_names=stats), cache_root)
    missing = [p for p in source.paths if not Path(p).exists()]
    if missing:
        raise SystemExit(f"{len(missing)} of {source.n} statistics files are not cached (first: {missing[0]}); "
                         "this script only reads a cache")
    return cut.search_truth, source


def fitness(scores: np.ndarray, truth: dict[str, np.ndarray]) -> float:
    kendall = get_metric("kendall")
    return float(np.mean([kendall(scores, col) for col in truth.values()]))


def run(pieces, n: int, programs: list[Proxy], truth, reuse=None) -> tuple[list[float], list[float]]:
    """Return each program's fitness and its evaluation seconds on the pieces (`reuse`: (fitness, seconds) per
    program not evaluated again, or None)."""
    fit, secs = [], []
    for i, p in enumerate(programs):
        if reuse is not None and reuse[i] is not None:
            fit.append(reuse[i][0])
            secs.append(reuse[i][1])
            continue
        scores = np.full(n, np.nan)
        t = time.perf_counter()
        for offset, stack in pieces:
            scores[offset: offset + stack.n] = evaluate_stacked(p, stack)[0]
        secs.append(time.perf_counter() - t)
        fit.append(fitness(scores, truth))
    return fit, secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default="nas-bench-201")
    ap.add_argument("--stats", default="weight,grad,virtual_grad,params,flops")
    ap.add_argument("--max-search", type=int, default=1000)
    ap.add_argument("--programs", type=int, default=50)
    ap.add_argument("--sketches", default="4096,1024")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slices", action="store_true", help="also each sketch size with slices (--sketch-slices)")
    ap.add_argument("--cache-root", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    stats = tuple(args.stats.split(","))
    t = time.perf_counter()
    truth, pieces, n = load_split(args.bench, stats, args.max_search, args.cache_root)
    print(f"{args.bench}: {n} search networks loaded and stacked in {time.perf_counter() - t:.0f} s", flush=True)
    cfg = SearchConfig()
    rng = random.Random(args.seed)
    grammar = Grammar(list(stats), GrowConfig(cfg.max_depth, cfg.max_size))
    programs = [program(random_program(rng, grammar)) for _ in range(args.programs)]
    with torch.no_grad():
        full_fit, full_secs = run(pieces, n, programs, truth)
        rows = [("full", 0.0, full_fit, full_secs, np.zeros(len(programs), dtype=bool))]
        for k in (int(x) for x in args.sketches.split(",")):
            for slices in (False, True) if args.slices else (False,):
                t = time.perf_counter()
                sketched = [(a, s.with_sketch(k, slices)) for a, s in pieces]
                build = time.perf_counter() - t
                readers = np.array([reading(p.root, sketched[0][1]) is not None for p in programs])
                fit, secs = run(sketched, n, programs, truth,
                                [None if r else (f, t) for r, f, t in zip(readers, full_fit, full_secs)])
                rows.append((f"sketch {k}" + (" + slices" if slices else ""), build, fit, secs, readers))
                for _, s in pieces:
                    s._views.clear()  # keep one sketch in memory at a time
    full = np.array(full_fit)
    print(f"{len(programs)} random programs (seed {args.seed}); one process, one torch thread")
    print("| statistics | build s | programs/s (all) | readers | programs/s (readers) | Kendall(sketched, full fitness) |")
    print("|---|---:|---:|---:|---:|---:|")
    kendall = get_metric("kendall")
    for label, build, fit, secs, readers in rows:
        fit, secs = np.array(fit), np.array(secs)
        ok = np.isfinite(fit) & np.isfinite(full)
        agree = kendall(fit[ok], full[ok]) if ok.sum() > 2 else float("nan")
        only = kendall(fit[ok & readers], full[ok & readers]) if (ok & readers).sum() > 2 else float("nan")
        rate_readers = readers.sum() / secs[readers].sum() if readers.any() else float("nan")
        print(f"| {label} | {build:.1f} | {len(secs) / secs.sum():.2f} | {int(readers.sum())} | {rate_readers:.2f} | "
              f"{agree:+.3f} ({ok.sum()} defined; readers {only:+.3f}) |", flush=True)


if __name__ == "__main__":
    main()
