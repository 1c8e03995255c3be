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
from typing import Any, Mapping, Sequence

import numpy as np


from emq.baselines import (
    ARCH_PREFIX, applicable_baselines, baseline_costs, baseline_scores, get_baseline, trivial_baselines,
)
from emq.bench.base import Benchmark, Candidate
from emq.degeneracy import degeneracy_flags
from emq.fitness import (
    NO_DISCOVERY, Metric, PairedDifference, TrivialChoice, get_metric, heldout_split, paired_bootstrap_difference,
    verdict,
)
from emq.proxy import Proxy
from emq.score_table import score_table
from emq.scoring import ScoreReport, ceiling_rows, rows_for, stream_scores
from emq.stats.cache import (
    StatsConfig, bench_fields, cache_folder, cache_key, calibration_inputs, load_or_compute, safe_name,
)
from search.config import SearchConfig
from search.engine import SearchResult, run_search
from search.hall_of_fame import add_heldout, write_hall_of_fame
from search.pool import EvaluationPool
from search.shard_worker import worker_device
from search.stats_source import StatsSource
from search.report import plot_scatter, write_summary
from search.run_folder import HELDOUT_SCORES


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
                                  [cache_key(bench.name, c, config, extra) for c in candidates])


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
) -> SearchResult:
    """Run the search on `bench`'s search split and compare its hall of fame with baselines on the held-out split.

    `max_search` caps the search networks (the first of the split, an explicit
    memory bound) and `max_heldout` the held-out ones (quick looks and tests: a
    verdict on fewer candidates has wider intervals); the probe is the first `search_config.probe_size` of them, also
    computed on batch seed + 1 for the input-independence screen. `trivial` names the
    trivial predictors (default: `trivial_baselines(bench)`): they feed the
    trivial-equivalent screen and the partial fitness, the best of them per target is
    chosen on the search split, and the summary ends with the run's verdict against it.
    """
    run_dir = Path(run_dir)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    all_truth = bench.ground_truth()
    targets = list(search_config.targets or all_truth)
    unknown = [t for t in targets if t not in all_truth]
    if unknown:
        raise KeyError(f"unknown target(s) {unknown} for benchmark {bench.name}; available: {', '.join(all_truth)}")
    candidates = bench.candidates()
    split = heldout_split([c.id for c in candidates], search_config.heldout_fraction, search_config.split_seed,
                          search_config.split_order)
    search_idx = split.search[:max_search] if max_search else split.search
    search_cands = [candidates[i] for i in search_idx]
    probe_cands = search_cands[: search_config.probe_size]
    other_config = dataclasses.replace(stats_config, batch_seed=stats_config.batch_seed + 1)
    trivial_names = list(trivial) if trivial is not None else trivial_baselines(bench)

    search_stats = load_or_compute(bench, search_cands, stats_config, progress=progress, cache_root=cache_root)
    probe_other = load_or_compute(bench, probe_cands, other_config, progress=progress, cache_root=cache_root)
    search_trivial = baseline_scores(bench, trivial_names, stats_config, progress=progress, candidates=search_cands,
                                     cache_root=cache_root)
    sources = (None, None)
    if pool is not None and not pool.in_process:  # process workers read the cache files themselves
        sources = (cache_source(bench, search_cands, stats_config, cache_root), None)
    result = run_search(
        search_stats, probe_other, {t: all_truth[t][search_idx] for t in targets}, search_config, run_dir,
        pool=pool, progress=progress, resume=resume, probe_index=list(range(len(probe_cands))), sources=sources,
        command=command, trivial=search_trivial,
        features={n: v for n, v in search_trivial.items() if n.startswith(ARCH_PREFIX)},
    )
    del search_stats, probe_other
    if not result.finished:
        return result
    choices = result.best_trivial

    heldout_idx = split.heldout[:max_heldout] if max_heldout else split.heldout
    heldout_cands = [candidates[i] for i in heldout_idx]
    heldout_truth = {t: all_truth[t][heldout_idx] for t in targets}
    names = list(baselines) if baselines is not None else default_baselines(bench.family)
    names += [n for n in trivial_names if n not in names]
    base = baseline_scores(bench, names, stats_config, progress=progress, candidates=heldout_cands,
                           cache_root=cache_root)
    hall = result.hall_of_fame
    rows = []
    failures: dict[str, dict[str, int]] = {}
    best_scores = None
    metric = get_metric(search_config.metric)
    # Streamed: the held-out statistics are read a chunk at a time (5,000 NB201 cells would be 12 GB at once).
    heldout_scores = stream_scores([Proxy.from_formula(e["formula"]) for e in hall], bench, heldout_cands,
                                   stats_config, device=worker_device(pool.device if pool is not None else None),
                                   progress=progress, cache_root=cache_root)
    for entry, (scores, fails) in zip(hall, heldout_scores):
        add_heldout(entry, scores, heldout_truth, search_config.metric, dict(fails), n_boot)
        entry.update(against_trivial(scores, choices, base, heldout_truth, metric, search_config.joint, n_boot))
        name = f"evolved #{entry['rank']}"
        rows += rows_for(name, "proxy", scores, heldout_truth,
                         degeneracy_flags(scores) + list(entry.get("flags", [])), entry["formula"], n_boot)
        if fails:
            failures[name] = dict(fails)
        if best_scores is None:
            best_scores = scores
    costs = baseline_costs(bench, names, stats_config, cache_root)
    for name in names:
        rows += rows_for(name, "baseline", base[name], heldout_truth, degeneracy_flags(base[name]), n_boot=n_boot,
                         seconds=costs.get(name))
    rows += ceiling_rows(bench, heldout_cands, heldout_truth)
    batch = bench.batch(stats_config.batch_seed, stats_config.batch_size).describe()
    report = ScoreReport(bench.name, "heldout", len(heldout_cands), batch, stats_config.describe(), rows, failures)
    outcome = run_verdict(hall[0] if hall else None, choices, targets)
    meta = {"benchmark": bench.name, "split": {"seed": search_config.split_seed,
                                               "heldout_fraction": search_config.heldout_fraction,
                                               "order": search_config.split_order,
                                               "search": len(search_idx), "heldout": len(heldout_cands)},
            "batch": batch, "best_trivial": {t: c.to_json() for t, c in choices.items()},
            "trivial_heldout": hall[0]["trivial_heldout"] if hall else {}, "verdict": outcome,
            "stats": found_with(bench, stats_config)}
    write_hall_of_fame(run_dir, hall, search_config, command, meta)
    columns = {f"evolved #{e['rank']}": s for e, (s, _) in zip(hall, heldout_scores)}
    columns.update({f"baseline:{n}": base[n] for n in names})
    score_table(heldout_cands, heldout_truth, columns, {
        "benchmark": bench.name, "split": meta["split"], "batch": batch, "metric": search_config.metric,
        "joint": search_config.joint, "n_boot": n_boot, "best_trivial": meta["best_trivial"],
        "programs": {f"evolved #{e['rank']}": e["formula"] for e in hall}, "command": command,
    }).write(run_dir / HELDOUT_SCORES)
    if best_scores is not None:
        t0 = targets[0]
        plot_scatter(best_scores, heldout_truth[t0], run_dir / "scatter.png",
                     f"{hall[0]['formula']}\nheld-out {search_config.metric} = {hall[0]['heldout'][t0]:+.3f}",
                     ylabel=f"{t0} (held-out)")
    extra = [f"Benchmark `{bench.name}`: {len(search_idx)} search networks, {len(heldout_cands)} held-out "
             f"(split seed {search_config.split_seed}); fitness = {search_config.fitness} {search_config.metric} "
             f"({search_config.joint} over {', '.join(targets)}); seed {search_config.seed}; "
             f"batch seed {stats_config.batch_seed}.", "",
             "Best trivial predictor per target (chosen on the search split): "
             + (", ".join(f"{t}: `{c.label}` ({search_config.metric} {c.search_value:+.3f})"
                          for t, c in choices.items()) or "none") + ".", ""]
    write_summary(run_dir / "summary.md", f"EMQ search on {bench.name}", command, report.to_markdown(), hall,
                  result.log, extra, verdict_line(outcome))
    result.hall_of_fame = hall
    return result


def found_with(bench: Benchmark, config: StatsConfig) -> dict[str, Any]:
    """Return the statistics settings a program was found with (stored in exported proxies; `Proxy.score` reuses them)."""
    calib = bench.calibration_batch()
    has_calib = calibration_inputs(bench) is not None
    return {"act_bits": getattr(bench, "act_bits", 8) if bench.family == "mq" else None,
            "hessian_samples": config.hessian_samples, "batch_size": config.batch_size,
            "batch_seed": config.batch_seed, "init_seed": config.init_seed,
            "calibration": (calib.source if calib is not None else f"{bench.name} calibration inputs")
            if has_calib else "batch"}


def against_trivial(scores: np.ndarray, choices: dict[str, TrivialChoice], trivial: Mapping[str, np.ndarray],
                    truth: Mapping[str, np.ndarray], metric: Metric, mode: str, n_boot: int) -> dict[str, Any]:
    """Return a program's held-out comparison with the chosen trivial predictors (values on the same candidates).

    `trivial_heldout` is each chosen predictor's metric per target; `vs_best_trivial`
    the paired bootstrap of joint metric(program) - joint metric(predictors), present
    only when every target has a chosen predictor.
    """
    control = {t: c.oriented(trivial[c.name]) for t, c in choices.items()}
    out: dict[str, Any] = {"trivial_heldout": {t: metric(v, truth[t]) for t, v in control.items()}}
    if len(control) == len(truth):
        out["vs_best_trivial"] = paired_bootstrap_difference(scores, control, truth, metric, mode, n_boot).to_json()
    return out


def run_verdict(best: dict[str, Any] | None, choices: dict[str, TrivialChoice], targets: Sequence[str]) -> dict[str, Any]:
    """Return this run's verdict: the best program (by search fitness) against the best trivial predictor on held-out."""
    if best is None or "vs_best_trivial" not in best:
        why = "no program passed screening" if best is None else "no trivial predictor is defined for every target"
        return {"verdict": NO_DISCOVERY, "why": why, "difference": None}
    diff = PairedDifference(**best["vs_best_trivial"])
    return {"verdict": verdict([diff]), "formula": best["formula"],
            "difference": diff.to_json(), "trivial": {t: choices[t].label for t in targets}}


def verdict_line(outcome: dict[str, Any]) -> str:
    """Return the summary's closing line, e.g. `Verdict (this run): no discovery — ...`."""
    if outcome.get("difference") is None:
        return f"Verdict (this run): {outcome['verdict']} ({outcome['why']})."
    d = outcome["difference"]
    trivial = ", ".join(sorted(set(outcome["trivial"].values())))
    return (f"Verdict (this run): **{outcome['verdict']}**: held-out Kendall of evolved #1 minus best trivial "
            f"predictor ({trivial}) = {d['value']:+.3f}, paired bootstrap 95% CI [{d['low']:+.3f}, {d['high']:+.3f}]"
            f" ({d['n_boot']} resamples). A discovery claim needs this in the median over >= 3 search seeds x 2 "
            "batch seeds (`emq search ... --seeds 0,1,2 --batch-seeds 0,1`).")
