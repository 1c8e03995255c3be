"""One search run on a benchmark, end to end: split, cached statistics, evolution, held-out judgement.

The split, the trivial predictor and the verdict follow `search.protocol` (the honest
bar): the search sees only the search split; the hall of fame is then scored on the
held-out split beside the hand-designed baselines, with bootstrap intervals, and the
run folder gets hall_of_fame.json, heldout_scores.csv, `summary.md` and `scatter.png`.
"""
from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np


from emq.baselines import (
    ARCH_PREFIX, applicable_baselines, baseline_costs, baseline_scores, get_baseline, trivial_baselines,
)
from emq.bench.base import Benchmark, Candidate
from emq.degeneracy import degeneracy_flags
from emq.fitness import get_metric
from emq.proxy import Proxy
from emq.score_table import score_table
from emq.scoring import ScoreReport, ceiling_rows, rows_for
from emq.stats.cache import (
    StatsConfig, bench_fields, cache_folder, cache_key, calibration_inputs, candidate_file, load_or_compute,
)
from emq.stats.fill import fill_cache
from search.config import SearchConfig
from search.engine import SearchResult, run_search
from search.hall_of_fame import add_heldout
from search.pool import EvaluationPool
from search.protocol import (
    RunCut, against_trivial, choose_known, cut_run, run_verdict, score_heldout, verdict_line,
)
from search.shard_worker import worker_device
from search.stats_source import StatsSource
from search.report import plot_scatter, write_summary
from search.run_folder import RunFolder


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
    return StatsSource.from_files([candidate_file(folder, c) for c in candidates],
                                  [cache_key(bench.name, c, config, extra) for c in candidates])


def local_workers(pool: EvaluationPool | None) -> int:
    """Return how many local processes may fill the statistics cache: the loky pool's workers, else 1."""
    return pool.n_jobs if pool is not None and pool.backend == "loky" else 1


def search_benchmark(
    bench: Benchmark,
    stats_config: StatsConfig,
    search_config: SearchConfig,
    run_dir: str | Path,
    pool: EvaluationPool | None = None,
    baselines: Sequence[str] | None = None,
    max_search: int | None = None,
    max_heldout: int | None = None,
    progress: bool = True,
    resume: bool = False,
    cache_root: str | Path | None = None,
    command: str | None = None,
    n_boot: int = 1000,
    trivial: Sequence[str] | None = None,
    screen_in: str = "workers",
) -> SearchResult:
    """Run the search on `bench`'s search split and compare its hall of fame with baselines on the held-out split.

    `max_search` caps the search networks (the first of the split, an explicit
    memory bound) and `max_heldout` the held-out ones (quick looks and tests: a
    verdict on fewer candidates has wider intervals); the probe is the first `search_config.probe_size` of them, also
    computed on batch seed + 1 for the input-independence screen. `trivial` names the
    trivial predictors (default: `trivial_baselines(bench)`): they feed the
    trivial-equivalent screen and the partial fitness, the best of them per target is
    chosen on the search split, and the summary ends with the run's verdict against it.
    `screen_in`: see `search.engine.run_search`.
    """
    run_dir = Path(run_dir)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    targets = list(search_config.targets or bench.ground_truth())
    cut = cut_run(bench, targets, search_config.heldout_fraction, search_config.split_seed,
                  search_config.split_order, max_search, max_heldout)
    trivial_names = list(trivial) if trivial is not None else trivial_baselines(bench, search_config.separable)
    result = _evolve(bench, cut, stats_config, search_config, run_dir, pool, trivial_names, progress, resume,
                     cache_root, command, screen_in)
    if result.finished:
        names = list(baselines) if baselines is not None else default_baselines(bench.family)
        # a separable run's bar is chosen among the separable trivial predictors; the others are rows of its table
        rows = trivial_baselines(bench) if search_config.separable and trivial is None else []
        names = list(dict.fromkeys([*names, *trivial_names, *rows]))
        _judge(bench, cut, stats_config, search_config, result, names, pool, progress, cache_root, command, n_boot)
    return result


def _evolve(bench: Benchmark, cut: RunCut, stats_config: StatsConfig, search_config: SearchConfig, run_dir: Path,
            pool: EvaluationPool | None, trivial_names: Sequence[str], progress: bool, resume: bool,
            cache_root: str | Path | None, command: str, screen_in: str = "workers") -> SearchResult:
    """Compute (or read) the search split's statistics and trivial predictors, then run the evolution."""
    probe_cands = cut.search[: search_config.probe_size]
    other_config = dataclasses.replace(stats_config, batch_seed=stats_config.batch_seed + 1)
    fill_cache(bench, cut.search, stats_config, local_workers(pool), cache_root, progress)
    search_stats = load_or_compute(bench, cut.search, stats_config, progress=progress, cache_root=cache_root)
    probe_other = load_or_compute(bench, probe_cands, other_config, progress=progress, cache_root=cache_root)
    search_trivial = baseline_scores(bench, trivial_names, stats_config, progress=progress, candidates=cut.search,
                                     cache_root=cache_root)
    sources = (None, None)
    if pool is not None and not pool.in_process:  # process workers read the cache files themselves
        sources = (cache_source(bench, cut.search, stats_config, cache_root),
                   cache_source(bench, probe_cands, other_config, cache_root))
    return run_search(
        search_stats, probe_other, cut.search_truth, search_config, run_dir,
        pool=pool, progress=progress, resume=resume, probe_index=list(range(len(probe_cands))), sources=sources,
        command=command, trivial=search_trivial, screen_in=screen_in,
        features={n: v for n, v in search_trivial.items() if n.startswith(ARCH_PREFIX)},
    )


def _judge(bench: Benchmark, cut: RunCut, stats_config: StatsConfig, search_config: SearchConfig,
           result: SearchResult, names: Sequence[str], pool: EvaluationPool | None, progress: bool,
           cache_root: str | Path | None, command: str, n_boot: int) -> None:
    """Score the hall of fame and the baselines held out, then write hall, scores, scatter, summary and verdict."""
    choices = result.best_trivial
    truth = cut.heldout_truth
    metric = get_metric(search_config.metric)
    fill_cache(bench, cut.heldout, stats_config, local_workers(pool), cache_root, progress)
    known = choose_known(bench, names, stats_config, cut, metric, progress, cache_root)  # the second bar
    base = baseline_scores(bench, names, stats_config, progress=progress, candidates=cut.heldout,
                           cache_root=cache_root)
    hall = result.hall_of_fame
    heldout_scores = score_heldout([Proxy.from_formula(e["formula"]) for e in hall], bench, cut, stats_config,
                                   device=worker_device(pool.device if pool is not None else None),
                                   progress=progress, cache_root=cache_root)
    rows, failures = [], {}
    for entry, (scores, fails) in zip(hall, heldout_scores):
        add_heldout(entry, scores, truth, search_config.metric, dict(fails), n_boot)
        entry.update(against_trivial(scores, choices, base, truth, metric, search_config.joint, n_boot))
        if known:
            entry.update(against_trivial(scores, known, base, truth, metric, search_config.joint, n_boot, bar="known"))
        name = f"evolved #{entry['rank']}"
        rows += rows_for(name, "proxy", scores, truth,
                         degeneracy_flags(scores) + list(entry.get("flags", [])), entry["formula"], n_boot)
        if fails:
            failures[name] = dict(fails)
    costs = baseline_costs(bench, names, stats_config, cache_root)
    for name in names:
        rows += rows_for(name, "baseline", base[name], truth, degeneracy_flags(base[name]), n_boot=n_boot,
                         seconds=costs.get(name))
    rows += ceiling_rows(bench, cut.heldout, truth)
    batch = bench.batch(stats_config.batch_seed, stats_config.batch_size).describe()
    report = ScoreReport(bench.name, "heldout", len(cut.heldout), batch, stats_config.describe(), rows, failures)
    outcome = run_verdict(hall[0] if hall else None, choices, list(truth), known)
    meta = {"benchmark": bench.name, "split": cut.describe(),
            "batch": batch, "best_trivial": {t: c.to_json() for t, c in choices.items()},
            **({"best_known": {t: c.to_json() for t, c in known.items()}} if known else {}),
            "trivial_heldout": hall[0]["trivial_heldout"] if hall else {}, "verdict": outcome,
            "stats": found_with(bench, stats_config)}
    folder = RunFolder(result.run_dir)
    folder.write_hall(hall, search_config, command, meta)
    columns = {f"evolved #{e['rank']}": s for e, (s, _) in zip(hall, heldout_scores)}
    columns.update({f"baseline:{n}": base[n] for n in names})
    folder.write_scores(score_table(cut.heldout, truth, columns, {
        "benchmark": bench.name, "split": meta["split"], "batch": batch, "metric": search_config.metric,
        "joint": search_config.joint, "n_boot": n_boot, "best_trivial": meta["best_trivial"],
        **({"best_known": meta["best_known"]} if known else {}),
        "programs": {f"evolved #{e['rank']}": e["formula"] for e in hall}, "command": command,
    }))
    _write_summary(bench, cut, stats_config, search_config, result, report, outcome, heldout_scores, command)


def _write_summary(bench: Benchmark, cut: RunCut, stats_config: StatsConfig, search_config: SearchConfig,
                   result: SearchResult, report: ScoreReport, outcome: Mapping[str, Any],
                   heldout_scores: Sequence[tuple[np.ndarray, Any]], command: str) -> None:
    """Write the run's scatter plot (best program, first target) and summary.md, closing with the verdict line."""
    hall, choices, folder = result.hall_of_fame, result.best_trivial, RunFolder(result.run_dir)
    targets = list(cut.heldout_truth)
    if hall:
        t0 = targets[0]
        plot_scatter(heldout_scores[0][0], cut.heldout_truth[t0], folder.path / "scatter.png",
                     f"{hall[0]['formula']}\nheld-out {search_config.metric} = {hall[0]['heldout'][t0]:+.3f}",
                     ylabel=f"{t0} (held-out)")
    extra = [f"Benchmark `{bench.name}`: {len(cut.search)} search networks, {len(cut.heldout)} held-out "
             f"(split seed {search_config.split_seed}); fitness = {search_config.fitness} {search_config.metric} "
             f"({search_config.joint} over {', '.join(targets)}); {search_config.strategy_text()}; "
             f"seed {search_config.seed}; batch seed {stats_config.batch_seed}.", "",
             "Best trivial predictor per target (chosen on the search split"
             + (" among the separable ones, of the search's cost; `qloss_calib`, a pass per configuration, is a "
                "row of the table" if search_config.separable else "") + "): "
             + (", ".join(f"{t}: `{c.label}` ({search_config.metric} {c.search_value:+.3f})"
                          for t, c in choices.items()) or "none") + ".", ""]
    write_summary(folder.summary, f"EMQ search on {bench.name}", command, report.to_markdown(), hall,
                  result.log, extra, verdict_line(outcome))


def found_with(bench: Benchmark, config: StatsConfig) -> dict[str, Any]:
    """Return the statistics settings a program was found with (stored in exported proxies; `Proxy.score` reuses them)."""
    calib = bench.calibration_batch()
    has_calib = calibration_inputs(bench) is not None
    return {"act_bits": getattr(bench, "act_bits", 8) if bench.family == "mq" else None,
            "hessian_samples": config.hessian_samples, "batch_size": config.batch_size,
            "batch_seed": config.batch_seed, "init_seed": config.init_seed,
            "calibration": (calib.source if calib is not None else f"{bench.name} calibration inputs")
            if has_calib else "batch"}
