"""`emq fit`: learn a run's best program's layer weights on its search split, then judge it on held-out.

The source is a search run folder (its best program, split, targets and statistics
settings) or an exported proxy file (the same facts from its `meta`). Weights are
fitted on the run's search candidates only (`emq.fit`), and the held-out split then
measures the fitted program against the unfitted one and against the best trivial
predictor (chosen on the search split), each by a paired bootstrap: the verdict
protocol of the honest bar, applied to the fitted program.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from emq.atomic import check_writes, write_text_atomic
from emq.baselines import trivial_baselines
from emq.bench.base import Benchmark
from emq.fit import FitError, FitSettings, describe_fit, fit_layer_weights
from emq.fitness import PairedDifference, get_metric, paired_bootstrap_difference, verdict
from emq.proxy import Proxy
from emq.stats.cache import load_or_compute
from emq.stats.config import StatsConfig
from search.protocol import against_trivial, choose_trivial, cut_run, score_heldout, trivial_on_heldout
from search.hall_of_fame import json_finite
from search.run_folder import read_run, run_folder_files

#: `emq fit`'s output in a run folder it fits (with its report, fitted-proxy.md).
FITTED_PROXY = "fitted-proxy.json"


@dataclass(frozen=True)
class FitSource:
    """What `emq fit` needs from a run or proxy file: the program, its benchmark, split, targets and stat settings."""

    proxy: Proxy
    benchmark: str
    targets: tuple[str, ...]
    metric: str
    joint: str
    split_seed: int
    heldout_fraction: float
    split_order: str
    n_search: int | None
    n_heldout: int | None
    stat_names: tuple[str, ...] | None
    stats: Mapping[str, Any]


def read_fit_source(path: Path, rank: int = 1) -> FitSource:
    """Return the fit source of a run folder (its program of `rank`) or of an exported proxy file."""
    if path.is_dir():
        run = read_run(path)
        c = run.config
        return FitSource(run.program(rank), run.benchmark, run.targets, c.metric, c.joint, c.split_seed,
                         c.heldout_fraction, c.split_order, run.n_search, run.n_heldout, run.stat_names, run.stats)
    proxy = Proxy.load(path)
    meta = proxy.meta
    if "benchmark" not in meta or "split" not in meta:
        raise FitError(f"{path}: the proxy's meta does not name its benchmark and split; fit a run folder "
                       "(emq fit runs/NAME-seed0) or a file written by `emq export`")
    split = meta["split"]
    return FitSource(proxy, meta["benchmark"], tuple(meta.get("best_trivial", {})) or tuple(meta["fitness"]["search"]),
                     meta.get("fitness", {}).get("metric", "kendall"), "mean", split["seed"], split["heldout_fraction"],
                     split.get("order", "index"), split.get("search"), split.get("heldout"), None, meta.get("stats", {}))


def stats_config_of(source: FitSource, device: str | None = None) -> StatsConfig:
    """Return the statistics settings the source's program was found with (so its cache is reused).

    The run recorded them as `found_with` (batch seed and size, init seed, Hessian
    samples); `StatsConfig.from_json` checks them and names a damaged field.
    """
    s = source.stats
    names = source.stat_names or tuple(sorted(source.proxy.stats_needed))
    recorded = {k: s[k] for k in ("batch_seed", "batch_size", "init_seed", "hessian_samples") if k in s}
    try:
        return StatsConfig.from_json({"stat_names": list(names), **recorded, "device": device})
    except ValueError as err:
        raise FitError(f"the run's statistics settings ('stats' in its hall of fame or proxy meta) are damaged: "
                       f"{err}; rerun the search or restore the file") from None


def fit_run(bench: Benchmark, source: FitSource, stats_config: StatsConfig, settings: FitSettings, out_file: Path,
            command: str, n_boot: int = 1000, progress: bool = True,
            cache_root: str | Path | None = None) -> dict[str, Any]:
    """Fit, score held-out before/after, write the fitted proxy (`out_file`) and its report (`.md`); return the record."""
    start = time.perf_counter()
    truth = bench.ground_truth()
    targets = list(source.targets) or list(truth)
    missing = [t for t in targets if t not in truth]
    if missing:
        raise FitError(f"targets {missing} are not columns of {bench.name} ({', '.join(truth)})")
    cut = cut_run(bench, targets, source.heldout_fraction, source.split_seed, source.split_order,
                  source.n_search, source.n_heldout)
    search_stats = load_or_compute(bench, cut.search, stats_config, progress=progress, cache_root=cache_root)
    result = fit_layer_weights(source.proxy, search_stats, cut.search_truth, settings)
    del search_stats
    fitted = source.proxy.with_layer_weights(result.weights)
    metric = get_metric(source.metric)
    choices = choose_trivial(bench, trivial_baselines(bench), stats_config, cut, metric, progress, cache_root)
    held_truth = cut.heldout_truth
    (before, _), (after, fails) = score_heldout([source.proxy, fitted], bench, cut, stats_config,
                                                progress=progress, cache_root=cache_root)
    trivial = trivial_on_heldout(bench, choices, stats_config, cut, progress, cache_root)
    vs_before = paired_bootstrap_difference(after, before, held_truth, metric, source.joint, n_boot)
    against = against_trivial(after, choices, trivial, held_truth, metric, source.joint, n_boot)
    vs_trivial = against.get("vs_best_trivial")
    record = {
        "benchmark": bench.name, "formula": source.proxy.formula(), "targets": targets,
        "split": {"search": len(cut.search), "heldout": len(cut.heldout), "seed": source.split_seed,
                  "order": source.split_order},
        "stats": stats_config.describe(), "fit": describe_fit(result),
        "heldout_before": {t: metric(before, c) for t, c in held_truth.items()},
        "heldout_after": {t: metric(after, c) for t, c in held_truth.items()},
        "best_trivial": {t: c.label for t, c in choices.items()},
        "trivial_heldout": against["trivial_heldout"],
        "after_minus_before": vs_before.to_json(),
        "after_minus_trivial": vs_trivial,
        "verdict": verdict([PairedDifference(**vs_trivial)]) if vs_trivial else "no discovery",
        "failures": dict(fails), "seconds": round(time.perf_counter() - start, 1), "command": command,
    }
    meta = {**fitted.meta, "fit": json_finite({k: record[k] for k in ("heldout_before", "heldout_after",
                                                                        "after_minus_before", "after_minus_trivial")})}
    Proxy(fitted.root, meta, layer_weights=result.weights).save(out_file)
    write_text_atomic(out_file.with_suffix(".md"), fit_markdown(record, result.weights.weights, out_file))
    return json_finite(record)


def fit_markdown(record: Mapping[str, Any], weights: Mapping[str, float], out_file: Path) -> str:
    """Return the fit report: before/after on held-out, the comparison with the best trivial predictor, the weights."""
    def diff(d: Mapping[str, Any] | None) -> str:
        return "n/a" if not d else f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"

    lines = [f"# emq fit: `{record['formula']}` on {record['benchmark']}", "", "Produced by:", "",
             f"    {record['command']}", "",
             f"Fitted on {record['fit']['keys']} layer keys, {record['split']['search']} search candidates "
             f"(best validation step {record['fit']['best_step']}); judged on {record['split']['heldout']} held-out "
             f"candidates ({record['seconds']:.0f} s). Fitted proxy: `{out_file.name}`.", "",
             "| target | held-out before | held-out after | best trivial (search split) | trivial held-out |",
             "|---|---|---|---|---|"]
    for t in record["targets"]:
        lines.append(f"| {t} | {record['heldout_before'][t]:+.3f} | {record['heldout_after'][t]:+.3f} | "
                     f"`{record['best_trivial'].get(t, '-')}` | {record['trivial_heldout'].get(t, float('nan')):+.3f} |")
    lines += ["", f"After minus before (paired 95% CI): {diff(record['after_minus_before'])}.",
              f"After minus best trivial (paired 95% CI): {diff(record['after_minus_trivial'])}: "
              f"**{record['verdict']}** for this run.", "", "## Weights (exp(phi), 1 = unfitted)", "",
              "| layer key | weight |", "|---|---|"]
    lines += [f"| `{k}` | {w:.3f} |" for k, w in sorted(weights.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


def fit_source(path: Path, settings: FitSettings, out_file: Path | None, command: str, rank: int = 1,
               data_dir: Path | None = None, batch_source: str | None = None, device: str | None = None,
               n_boot: int = 1000, notify: Any = None) -> dict[str, Any]:
    """`emq fit` as one call: read the run or proxy file, open its benchmark, fit, judge, write; return the record."""
    from emq.bench.registry import open_benchmark

    source = read_fit_source(path, rank)
    if out_file is None:
        out_file = path / FITTED_PROXY if path.is_dir() else path.with_name(f"{path.stem}-fitted.json")
    check_fit_outputs(path, out_file)
    bench = open_benchmark(source.benchmark, data_dir, notify=notify, batch_source=batch_source)
    return fit_run(bench, source, stats_config_of(source, device), settings, out_file, command, n_boot=n_boot)


def check_fit_outputs(source: Path, out_file: Path) -> None:
    """Fail before any work if the fitted proxy or its `.md` report would replace the source or a run-folder file.

    In a run folder only `emq fit`'s own files (fitted-proxy.json / .md) may be replaced.
    """
    own = (FITTED_PROXY, Path(FITTED_PROXY).with_suffix(".md").name)
    inputs = run_folder_files(source, except_names=own) if source.is_dir() else [source]
    check_writes([out_file, out_file.with_suffix(".md")], inputs)


def fit_summary(record: Mapping[str, Any]) -> str:
    """Return the one-line summary of a fit record (held-out before/after, against the best trivial predictor)."""
    before = ", ".join(f"{t} {v:+.3f}" for t, v in record["heldout_before"].items())
    after = ", ".join(f"{t} {v:+.3f}" for t, v in record["heldout_after"].items())
    d = record["after_minus_trivial"]
    against = f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "n/a"
    return (f"held-out before: {before}; after: {after}; after - best trivial: {against} -> {record['verdict']} "
            f"({record['seconds']:.0f} s)")
