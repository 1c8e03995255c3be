"""Search a benchmark end to end: split, cached statistics, evolution, held-out comparison with baselines.

The candidates are split once by `emq.fitness.heldout_split` (fixed seed): the
search sees only the search split; the hall of fame is then scored on the
held-out split beside the hand-designed baselines, with bootstrap intervals, and
the run folder gets `summary.md` and `scatter.png`.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence


from emq.baselines import applicable_baselines, baseline_scores, get_baseline
from emq.bench.base import Benchmark, Candidate
from emq.degeneracy import degeneracy_flags
from emq.fitness import heldout_split
from emq.proxy import Proxy
from emq.scoring import ScoreReport, rows_for
from emq.stats_cache import (
    StatsConfig, bench_fields, cache_folder, cache_key, load_or_compute, safe_name,
)
from search.evolution import (
    SearchConfig, SearchResult, add_heldout, load_hall_of_fame, run_search, write_hall_of_fame,
)
from search.fast_eval import StackedStats, evaluate_stacked
from search.pool import EvaluationPool, StatsSource, worker_device
from search.report import plot_scatter, write_summary


def default_baselines(family: str) -> list[str]:
    """Return the baselines compared by default: the program ones of `applicable_baselines(family)`.

    Program baselines (params, flops, bit_sum, bparams, ...) are formulas on the
    cached statistics and cost nothing; model baselines (nwot, grasp, ...) run every
    network again, so they are opt-in through `baselines=`.
    """
    names = list(applicable_baselines(family))
    return [n for n in names if get_baseline(n).kind == "program"] or names


def cache_source(bench: Benchmark, candidates: Sequence[Candidate], config: StatsConfig,
                 cache_root: str | Path | None = None) -> StatsSource:
    """Return a pool source over the cached statistics files of `candidates` (compute them first)."""
    batch = bench.batch(config.batch_seed, config.batch_size)
    extra = bench_fields(bench, batch)
    folder = cache_folder(bench, config, cache_root)
    return StatsSource.from_files([folder / f"{safe_name(c.id)}.pt" for c in candidates],
                                  [cache_key(bench.name, c.id, config, extra) for c in candidates])


def search_benchmark(
    bench: Benchmark,
    stats_config: StatsConfig,
    search_config: SearchConfig,
    run_dir: str | Path,
    pool: EvaluationPool | None = None,
    baselines: Sequence[str] | None = None,
    max_search: int | None = None,
    progress: bool = True,
    resume: bool = False,
    cache_root: str | Path | None = None,
    command: str | None = None,
    n_boot: int = 1000,
) -> SearchResult:
    """Run the search on `bench`'s search split and compare its hall of fame with baselines on the held-out split.

    `max_search` caps the search networks (the first of the split, an explicit
    memory bound); the probe is the first `search_config.probe_size` of them, also
    computed on batch seed + 1 for the input-independence screen.
    """
    run_dir = Path(run_dir)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    all_truth = bench.ground_truth()
    targets = list(search_config.targets or all_truth)
    unknown = [t for t in targets if t not in all_truth]
    if unknown:
        raise KeyError(f"unknown target(s) {unknown} for benchmark {bench.name}; available: {', '.join(all_truth)}")
    candidates = bench.candidates()
    split = heldout_split([c.id for c in candidates], search_config.heldout_fraction, search_config.split_seed)
    search_idx = split.search[:max_search] if max_search else split.search
    search_cands = [candidates[i] for i in search_idx]
    probe_cands = search_cands[: search_config.probe_size]
    other_config = dataclasses.replace(stats_config, batch_seed=stats_config.batch_seed + 1)

    search_stats = load_or_compute(bench, search_cands, stats_config, progress=progress, cache_root=cache_root)
    probe_other = load_or_compute(bench, probe_cands, other_config, progress=progress, cache_root=cache_root)
    sources = (None, None)
    if pool is not None and not pool.in_process:  # process workers read the cache files themselves
        sources = (cache_source(bench, search_cands, stats_config, cache_root),
                   cache_source(bench, probe_cands, other_config, cache_root))
    result = run_search(
        search_stats, probe_other, {t: all_truth[t][search_idx] for t in targets}, search_config, run_dir,
        pool=pool, progress=progress, resume=resume, probe_index=list(range(len(probe_cands))), sources=sources,
        command=command,
    )
    del search_stats, probe_other
    if not result.finished:
        return result

    heldout_cands = [candidates[i] for i in split.heldout]
    heldout_truth = {t: all_truth[t][split.heldout] for t in targets}
    heldout_stats = load_or_compute(bench, heldout_cands, stats_config, progress=progress, cache_root=cache_root)
    stacked = StackedStats(heldout_stats, worker_device(pool.device if pool is not None else None))
    del heldout_stats
    hall = result.hall_of_fame
    rows = []
    failures: dict[str, dict[str, int]] = {}
    best_scores = None
    for entry in hall:
        proxy = Proxy.from_formula(entry["formula"])
        scores, fails = evaluate_stacked(proxy, stacked)
        add_heldout(entry, scores, heldout_truth, search_config.metric, dict(fails), n_boot)
        name = f"evolved #{entry['rank']}"
        rows += rows_for(name, "proxy", scores, heldout_truth, degeneracy_flags(scores), entry["formula"], n_boot)
        if fails:
            failures[name] = dict(fails)
        if best_scores is None:
            best_scores = scores
    names = list(baselines) if baselines is not None else default_baselines(bench.family)
    if names:
        base = baseline_scores(bench, names, stats_config, progress=progress, candidates=heldout_cands,
                               cache_root=cache_root)
        for name in names:
            rows += rows_for(name, "baseline", base[name], heldout_truth, degeneracy_flags(base[name]), n_boot=n_boot)
    batch = bench.batch(stats_config.batch_seed, stats_config.batch_size).describe()
    report = ScoreReport(bench.name, "heldout", len(heldout_cands), batch, stats_config.describe(), rows, failures)
    meta = {"benchmark": bench.name, "split": {"seed": search_config.split_seed,
                                               "heldout_fraction": search_config.heldout_fraction,
                                               "search": len(search_idx), "heldout": len(heldout_cands)}}
    write_hall_of_fame(run_dir, hall, search_config, command, meta)
    if best_scores is not None:
        t0 = targets[0]
        plot_scatter(best_scores, heldout_truth[t0], run_dir / "scatter.png",
                     f"{hall[0]['formula']}\nheld-out {search_config.metric} = {hall[0]['heldout'][t0]:+.3f}",
                     ylabel=f"{t0} (held-out)")
    extra = [f"Benchmark `{bench.name}`: {len(search_idx)} search networks, {len(heldout_cands)} held-out "
             f"(split seed {search_config.split_seed}); fitness = {search_config.metric} "
             f"({search_config.joint} over {', '.join(targets)}); seed {search_config.seed}.", ""]
    write_summary(run_dir / "summary.md", f"EMQ search on {bench.name}", command, report.to_markdown(), hall,
                  result.log, extra)
    result.hall_of_fame = hall
    return result


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """Return the headline of a finished run: best formula and its fitness on search and held-out."""
    data = load_hall_of_fame(run_dir)
    best = data["programs"][0] if data["programs"] else None
    return {"run_dir": str(run_dir), "best": best and {k: best.get(k) for k in ("formula", "fitness", "search", "heldout")}}


