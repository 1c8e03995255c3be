"""Score every known proxy as a program (emq/known) beside its independent reference, on one benchmark's split.

For each library proxy the benchmark can compute: Kendall and Spearman of the program and
of its reference baseline with the ground truth (bootstrap 95% intervals), the Kendall
between program and reference (does the program reproduce it?), the cost per candidate
(program: its own statistics computed alone, plus evaluation, measured on a sample;
reference: the seconds `emq.baselines` recorded per candidate) and the published figure.
Rank aggregates (AZ-NAS) are ranked over the candidates scored, like the fitness.

    python results/known_proxies.py nas-bench-201 --split heldout --limit 5000 --targets fp_acc,ptq_acc \\
        --cache-root DIR --out results/known-proxies-nb201.md
    python results/known_proxies.py nas-bench-201 --split heldout --limit 200 --targets fp_acc,ptq_acc \\
        --out results/known-proxies-nb201-200.md   (the reproduction check; its --note is in the table)
    python results/known_proxies.py vit-digits --split heldout --targets test_acc,test_acc_low_data,test_acc_kd \\
        --out results/known-proxies-vit-digits.md
    python results/known_proxies.py vit-bench-101-autoformer --data-dir ../shared/benchmarks --split heldout \\
        --limit 40 --batch-size 8 --batch-source digits --targets c100_base_acc,c100_kd_acc --cost-sample 5 \\
        --out results/known-proxies-autoformer.md

Statistics share one cache folder per (benchmark, batch, statistic set); the script
prints its size on disk. On NAS-Bench-201 at batch 16 that is 23.4 MB per candidate
with Fisher's `act` and `act_grad`, about 7.5 MB without (`--names` without fisher):
5,000 held-out cells are 117 GB or 38 GB (`--cache-root` puts them on a scratch disk).
On one CPU thread the statistics took 4.1 s and the references about 5 s per cell (200
cells, CPU shared). On AutoFormer (224 x 224, batch 8) the statistics take about 63 s
per subnet on one thread (GraSP's `hessian_grad` 25 s alone, ZiCo's `grad_batch_*` 12 s)
and about 0.5 GB on disk, the references 77 s: 40 subnets are about 1.6 hours.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emq.atomic import write_text_atomic
from emq.baselines import baseline_costs, baseline_scores, get_baseline
from emq.baselines.structured import AGGREGATES, rank_aggregate
from emq.bench.registry import open_benchmark
from emq.evaluate import StackedStats, evaluate_stacked
from emq.fitness import bootstrap_interval, kendall, spearman
from emq.known import known_proxies
from emq.scoring import benchmark_offered_stats, select_split, stream_scores
from emq.stats.cache import cache_folder
from emq.stats.config import StatsConfig
from emq.stats.compute import compute_stats

#: Published NAS-Bench-201 CIFAR-10 figures (Kendall, Spearman) quoted by the issue that asked for this table.
PUBLISHED_NB201 = {
    "naswot": "0.571 / 0.762", "synflow": "0.561 / 0.758", "jacov": "0.616 / 0.800", "zico": "0.607 / 0.802",
    "meco": "- / 0.89", "az_nas": "0.71-0.74 / 0.89-0.91 (all 4 terms)", "az_complexity": "0.623 / 0.799 (FLOPs)",
}


def interval(scores: np.ndarray, truth: np.ndarray, metric, n_boot: int) -> str:
    value = metric(scores, truth)
    if not np.isfinite(value):
        return "n/a (constant)" if np.ptp(scores) == 0 else "n/a"
    low, high = bootstrap_interval(scores, truth, metric, n_boot)
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def agreement(mine: np.ndarray, theirs: np.ndarray | None) -> str:
    """Return the program-vs-reference Kendall, or say that both are the same constant (no ranking to compare)."""
    if theirs is None:
        return "n/a"
    value = kendall(mine, theirs)
    if np.isfinite(value):
        return f"{value:+.3f}"
    if np.allclose(mine, theirs, rtol=1e-5, atol=1e-12, equal_nan=True):
        return f"equal (all {float(np.nanmean(mine)):g})" if np.ptp(mine) == 0 else "equal"
    return "n/a"


def program_costs(bench, proxies, candidates, config: StatsConfig) -> dict[str, float]:
    """Return each program's seconds per candidate: its statistics computed alone, then its evaluation."""
    batch = bench.batch(config.batch_seed, config.batch_size)
    out = {}
    for name, proxy in proxies.items():
        seconds, stats = 0.0, []
        for cand in candidates:
            model = bench.build_model(cand, init_seed=config.init_seed)
            start = time.perf_counter()
            stats.append(compute_stats(model, batch, cand.bits, sorted(proxy.stats_needed),
                                       act_bits=getattr(bench, "act_bits", 8),
                                       store_dtype=config.torch_dtype(), teacher=bench.teacher(),
                                       device=config.resolved_device()))
            seconds += time.perf_counter() - start
        start = time.perf_counter()
        evaluate_stacked(proxy, StackedStats(stats))
        out[name] = (seconds + time.perf_counter() - start) / len(candidates)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark")
    parser.add_argument("--split", default="heldout", choices=("all", "search", "heldout"))
    parser.add_argument("--limit", type=int, help="only the first N candidates of the split")
    parser.add_argument("--targets", help="comma-separated ground-truth columns (default: the first)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-source", default=None)
    parser.add_argument("--names", help="comma-separated known proxies (default: every one the benchmark offers)")
    parser.add_argument("--cost-sample", type=int, default=20, help="candidates the program costs are measured on")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--cache-root", type=Path, default=None,
                        help="statistics cache folder (default: the usual one); it may be deleted afterwards")
    parser.add_argument("--out", type=Path, help="markdown report")
    parser.add_argument("--note", default="", help="a paragraph printed under the command (e.g. what a sample stands for)")
    args = parser.parse_args()

    bench = open_benchmark(args.benchmark, args.data_dir, batch_source=args.batch_source)
    offered = set(benchmark_offered_stats(bench))
    library = {n: e for n, e in known_proxies().items() if set(e.stats) <= offered
               and (not args.names or n in args.names.split(","))}
    proxies = {n: e.proxy for n, e in library.items()}
    needed = sorted(set().union(*(p.stats_needed for p in proxies.values())))
    config = StatsConfig(batch_size=args.batch_size, stat_names=tuple(needed), device=args.device)
    index = select_split(bench, args.split)[: args.limit]
    candidates = [bench.candidates()[i] for i in index]
    all_truth = bench.ground_truth()
    targets = args.targets.split(",") if args.targets else [next(iter(all_truth))]
    truth = {t: np.asarray(all_truth[t], dtype=np.float64)[index] for t in targets}

    start = time.perf_counter()
    programs = {n: s for n, (s, _) in zip(proxies, stream_scores(list(proxies.values()), bench, candidates, config,
                                                                  cache_root=args.cache_root))}
    stats_seconds = time.perf_counter() - start
    # An aggregate reference brings every aggregate's terms (az_nas_3 beside az_nas_ec).
    aggregated = any(e.reference in AGGREGATES for e in library.values())
    references = sorted({e.reference for e in library.values() if e.reference not in AGGREGATES}
                        | ({t for terms in AGGREGATES.values() for t in terms} if aggregated else set()))
    for name in references:
        get_baseline(name)  # an unknown reference fails here, before any work
    ref_scores = baseline_scores(bench, references, config, candidates=candidates, cache_root=args.cache_root)
    for name, terms in AGGREGATES.items():
        if all(t in ref_scores for t in terms):
            ref_scores[name] = rank_aggregate(ref_scores, terms)
    ref_costs = baseline_costs(bench, references, config, cache_root=args.cache_root)
    sample = candidates[: args.cost_sample]
    costs = program_costs(bench, proxies, sample, config)
    folder = cache_folder(bench, config, args.cache_root)
    disk = sum(p.stat().st_size for p in folder.glob("*.pt")) if folder.exists() else 0

    published = PUBLISHED_NB201 if args.benchmark == "nas-bench-201" else {}
    lines = [f"# Known proxies as programs beside their references on `{args.benchmark}`", "",
             "Reproduce: `python " + " ".join(shlex.quote(a) for a in sys.argv) + "`", "",
             *([args.note, ""] if args.note else []),
             f"Split `{args.split}`, {len(candidates)} candidates, batch {bench.batch(0, args.batch_size).describe()}; "
             f"statistics `{','.join(needed)}` ({disk / len(candidates) / 1e6:.2f} MB per candidate on disk, "
             f"cache key `{folder.parent.name}/{folder.name}`); scoring every program took {stats_seconds:.0f} s (statistics computed or read once). "
             f"Program cost: its statistics alone plus evaluation, mean over {len(sample)} candidates, "
             f"{torch.get_num_threads()} torch thread(s). Reference cost: as recorded by its baseline "
             "(aggregates: not a per-network cost).", ""]
    for target, column in truth.items():
        lines += [f"## `{target}`", "",
                  "| proxy | program Kendall [95% CI] | program Spearman [95% CI] | reference | reference Kendall | "
                  "reference Spearman | Kendall program vs reference | s / candidate: program / reference | "
                  "published (Kendall / Spearman) |", "|---|---|---|---|---|---|---|---|---|"]
        for name, entry in library.items():
            mine, theirs = programs[name], ref_scores.get(entry.reference)
            ref_cost = ref_costs.get(entry.reference)
            lines.append(
                f"| {name} | {interval(mine, column, kendall, args.bootstrap)} | "
                f"{interval(mine, column, spearman, args.bootstrap)} | {entry.reference} | "
                f"{interval(theirs, column, kendall, args.bootstrap) if theirs is not None else 'n/a'} | "
                f"{interval(theirs, column, spearman, args.bootstrap) if theirs is not None else 'n/a'} | "
                f"{agreement(mine, theirs)} | {costs[name]:.2f} / {f'{ref_cost:.2f}' if ref_cost is not None else '-'} | "
                f"{published.get(name, '-')} |")
        lines.append("")
    lines += ["Programs (`emq proxies list` gives each one's paper and fidelity):", ""]
    lines += [f"- {n}: `{e.formula}` (reference `{e.reference}`)" for n, e in library.items()]
    if "az_nas" in library and "az_nas_3" in ref_scores:
        lines += ["", "AZ-NAS with progressivity (`az_nas_3`: expressivity + progressivity + FLOPs, the reference "
                  "terms): " + ", ".join(f"`{t}` Kendall {kendall(ref_scores['az_nas_3'], c):+.3f}"
                                         for t, c in truth.items())
                  + f"; the program's Kendall with it {kendall(programs['az_nas'], ref_scores['az_nas_3']):+.3f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
