"""Score proxies and baselines on a benchmark: rank correlations with intervals, plus degeneracy flags."""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from emq.bench.base import Benchmark
from emq.degeneracy import (
    CONSTANT, INPUT_INDEPENDENT, TRIVIAL_EQUIVALENT, degeneracy_flags, hyperparameter_function, is_input_independent,
    trivial_match,
)
from emq.fitness import bootstrap_interval, heldout_split, kendall, spearman
from emq.score_table import ScoreTable, score_table
from emq.evaluate import StackedStats, block_for, evaluate_pieces, proxy_scores
from emq.proxy import Proxy
from emq.stats.cache import iter_stats, load_or_compute
from emq.stats.config import StatsConfig

SPLITS = ("all", "search", "heldout")


#: Candidates whose statistics `stream_scores` holds at once (rounded to whole stacking blocks).
STREAM_CHUNK = 512


def _baseline_cost_text(name: str) -> str:
    """Return the cost column of a baseline without measured seconds: read from the statistics cache or the table."""
    from emq.baselines import get_baseline
    from emq.baselines.registry import ARCH_PREFIX
    from emq.stats.catalogue import LAYER_BITS_STATS

    if name.startswith(ARCH_PREFIX) or get_baseline(name).kind != "program":
        return "stats cache"
    reads_table = get_baseline(name).proxy().stats_needed & set(LAYER_BITS_STATS)
    return "per-(layer, bits) table, once" if reads_table else "stats cache"


def stream_scores(
    programs: Sequence[Proxy], bench: Benchmark, candidates: Sequence[Any], config: StatsConfig,
    chunk: int = STREAM_CHUNK, device: str | None = None, progress: bool = True,
    cache_root: str | Path | None = None,
) -> list[tuple[np.ndarray, Counter]]:
    """Return (scores, failures) of each program on `candidates`, holding the statistics of one chunk at a time.

    Memory is bounded by `chunk` candidates' statistics, whatever the set's size (a
    NAS-Bench-201 held-out split of 5,000 cells is 12 GB of statistics). Chunks are
    whole stacking blocks of the set (`block_for(len(candidates))`), so the scores are
    bit-identical to stacking the whole set at once.
    """
    n = len(candidates)
    block = block_for(n)
    size = max(block, chunk // block * block)

    def pieces() -> Iterator[tuple[int, StackedStats]]:
        held: list[Any] = []
        offset = 0
        for stats in iter_stats(bench, candidates, config, progress=progress, cache_root=cache_root):
            held.append(stats)
            if len(held) == size:
                yield offset, StackedStats(held, device, block=block)
                offset += len(held)
                held = []
        if held:
            yield offset, StackedStats(held, device, block=block)

    scores, failures = evaluate_pieces(programs, pieces(), n)
    return [(scores[k], +failures[k]) for k in range(len(programs))]


@dataclass
class ScoreRow:
    """Agreement of one scorer with one ground-truth column on one set of candidates."""

    name: str
    kind: str  # "proxy" or "baseline"
    target: str
    n: int
    kendall: float
    kendall_ci: tuple[float, float]
    spearman: float
    spearman_ci: tuple[float, float]
    flags: list[str] = field(default_factory=list)
    formula: str = ""
    #: Measured cost of a model baseline (seconds per candidate); None for programs on the statistics cache.
    seconds: float | None = None
    trivial: bool = False


@dataclass
class ScoreReport:
    """All rows for one benchmark, with what was scored on (batch, split, stats config)."""

    benchmark: str
    split: str
    n_candidates: int
    batch: dict[str, Any]
    stats_config: dict[str, Any]
    rows: list[ScoreRow]
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Statistics added to the default set because a proxy reads them (proxy -> names; `stats_for_proxies`).
    added_stats: dict[str, list[str]] = field(default_factory=dict)
    #: Every scorer's value per candidate (written beside --out as CSV; not part of the JSON report).
    table: ScoreTable | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("rows", "table")}
        return {**data, "rows": [dataclasses.asdict(r) for r in self.rows]}

    def to_text(self) -> str:
        return self.to_markdown()

    def to_markdown(self, command: str = "") -> str:
        """Return a table a person can read: one line per scorer and target; with `command`, headed as a report."""
        lines = [f"# Scores on `{self.benchmark}`", "", f"Reproduce: `{command}`", "",
                 "Statistics: " + ", ".join(f"{k}={v}" for k, v in self.stats_config.items()), ""] if command else []
        lines += [
            f"Benchmark `{self.benchmark}`, split `{self.split}` ({self.n_candidates} candidates), "
            f"batch {self.batch.get('source')} seed {self.batch.get('seed')} size {self.batch.get('size')}.",
            "",
            *([_added_line(self.added_stats), ""] if self.added_stats else []),
            "| scorer | kind | target | n | Kendall tau [95% CI] | Spearman rho [95% CI] | s / candidate | flags |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            kind = f"{r.kind} (trivial)" if r.trivial else r.kind
            cost = _baseline_cost_text(r.name) if r.seconds is None and r.kind == "baseline" else \
                ("-" if r.seconds is None else f"{r.seconds:.3g}")
            lines.append(
                f"| {r.name} | {kind} | {r.target} | {r.n} | {_fmt(r.kendall, r.kendall_ci)} | "
                f"{_fmt(r.spearman, r.spearman_ci)} | {cost} | {', '.join(r.flags) or '-'} |"
            )
        formulas = [(r.name, r.formula) for r in self.rows if r.formula]
        if formulas:
            lines += ["", "Formulas:"] + [f"- `{n}`: `{f}`" for n, f in dict(formulas).items()]
        if any(self.failures.values()):
            lines += ["", "Evaluation failures (count by reason):"]
            lines += [f"- {name}: {dict(c)}" for name, c in self.failures.items() if c]
        return "\n".join(lines) + "\n"


def _added_line(added: Mapping[str, Sequence[str]]) -> str:
    """Return the sentence saying which statistics were added to the default set, for which proxies."""
    return ("Statistics added to the default set for the proxies that read them: "
            + "; ".join(f"{', '.join(stats)} ({name})" for name, stats in added.items()) + ".")


def _fmt(value: float, ci: tuple[float, float]) -> str:
    if not np.isfinite(value):
        return "n/a"
    if not all(np.isfinite(ci)):
        return f"{value:+.3f}"
    return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"


def ceiling_rows(bench: Benchmark, candidates: Sequence[Any], truth: Mapping[str, np.ndarray]) -> list[ScoreRow]:
    """Return one "replicate ceiling" row per target when the benchmark knows which candidates share a function.

    The row's Kendall / Spearman are those of each replicated candidate's truth with the
    mean truth of the other members of its class (`emq.replicate_ceiling`); `n` counts the
    replicated candidates (a subset of the table's). Benchmarks without function classes: [].
    """
    from emq.replicate_ceiling import replicate_ceiling

    classes = [bench.function_class(c) for c in candidates]
    if not classes or any(c is None for c in classes):
        return []
    rows = []
    for target, column in truth.items():
        tau = replicate_ceiling(classes, column, kendall)
        rho = replicate_ceiling(classes, column, spearman)
        rows.append(ScoreRow("replicate ceiling", "reference", target, tau.n_cells, tau.value, (np.nan, np.nan),
                             rho.value, (np.nan, np.nan), [f"{tau.n_classes} classes of separately trained twins"]))
    return rows


def benchmark_offered_stats(bench: Benchmark) -> tuple[str, ...]:
    """Return every statistic benchmark `bench` can compute (its family's, the classifier's, its teacher's, the
    structured ones)."""
    from emq.stats.compute import offered_stats

    return offered_stats(bench.family == "mq", bench.family, bench.teacher() is not None)


def benchmark_available_stats(bench: Benchmark, config: StatsConfig) -> tuple[str, ...]:
    """Return the statistics `config` computes on `bench`: those of its --stats the benchmark offers, else the default
    set (every applicable statistic; the classifier, teacher and structured ones are opt-in)."""
    from emq.stats.compute import applicable_stats

    if config.stat_names is None:
        return applicable_stats(bench.family == "mq", bench.family)
    return tuple(n for n in benchmark_offered_stats(bench) if n in config.stat_names)


def stats_for_proxies(bench: Benchmark, proxies: Mapping[str, Proxy],
                      config: StatsConfig) -> tuple[StatsConfig, dict[str, list[str]]]:
    """Return the config to compute and the statistics added for each proxy (empty when none was added).

    With the default statistics (`stat_names=None`) a proxy may read an opt-in statistic the
    benchmark offers (the classifier, teacher and structured ones: `act_channel_cov` for
    AZ-NAS); those are added to the default set, so naming a proxy is enough. An explicit
    `--stats` is the user's choice and is returned unchanged (`check_proxies_fit` then
    names what it lacks).
    """
    if config.stat_names is not None:
        return config, {}
    available = set(benchmark_available_stats(bench, config))
    offered = set(benchmark_offered_stats(bench))
    added = {name: sorted((proxy.stats_needed - available) & offered) for name, proxy in proxies.items()}
    added = {name: stats for name, stats in added.items() if stats}
    if not added:
        return config, {}
    extra = tuple(sorted(set().union(*map(set, added.values()))))
    return dataclasses.replace(config, stat_names=benchmark_available_stats(bench, config) + extra), added


def check_proxies_fit(bench: Benchmark, proxies: Mapping[str, Proxy], config: StatsConfig) -> None:
    """Fail before any statistics are computed when a proxy needs a statistic this benchmark (or --stats) lacks."""
    from emq.errors import StatUnavailableError

    offered = benchmark_offered_stats(bench)
    available = benchmark_available_stats(bench, config)
    for name, proxy in proxies.items():
        missing = sorted(set(proxy.stats_needed) - set(available))
        if missing:
            fix = f"; available: {', '.join(available)}"
            if not set(missing) <= set(offered):
                why = f"does not exist for {bench.family} networks"
            elif config.stat_names is None:
                why = "is not in the default statistics (name it in --stats)"
            else:  # the user chose --stats: say the exact option that adds what is missing
                why = "is not computed with this --stats"
                fix = f"; add it: --stats {','.join(config.stat_names + tuple(missing))}"
            raise StatUnavailableError(
                f"proxy {name!r} ({proxy.formula()}) needs statistic(s) {', '.join(missing)}, which {why} on "
                f"benchmark {bench.name}{fix}")


def trivial_flags(scores: np.ndarray, trivial: dict[str, np.ndarray], tau_limit: float = 0.95,
                  eta_limit: float = 0.99) -> list[str]:
    """Return `trivial_equivalent(<name>)` when the scores rank like a trivial predictor or are a function of an
    architecture hyperparameter (the search's screen, applied to every scored candidate), else []."""
    from emq.baselines import ARCH_PREFIX

    keep = np.isfinite(scores)
    twin = trivial_match(scores[keep], {k: v[keep] for k, v in trivial.items()}, tau_limit) or \
        hyperparameter_function(scores[keep], {k: v[keep] for k, v in trivial.items() if k.startswith(ARCH_PREFIX)},
                                eta_limit)
    return [] if twin is None else [f"{TRIVIAL_EQUIVALENT}({twin})"]


def select_split(bench: Benchmark, split: str, split_seed: int = 0, heldout_fraction: float = 0.5) -> np.ndarray:
    """Return candidate indices for `split` ('all', 'search' or 'heldout')."""
    ids = bench.candidate_ids()
    if split == "all":
        return np.arange(len(ids))
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    parts = heldout_split(ids, heldout_fraction, split_seed)
    return parts.search if split == "search" else parts.heldout


def rows_for(
    name: str, kind: str, scores: np.ndarray, truth: dict[str, np.ndarray], flags: list[str],
    formula: str = "", n_boot: int = 1000, seed: int = 0, seconds: float | None = None,
) -> list[ScoreRow]:
    """Return one ScoreRow per ground-truth column for these scores (`seconds`: a model baseline's cost per candidate)."""
    from emq.baselines import is_trivial  # baselines build on scoring's neighbours; keep import local

    rows = []
    for target, column in truth.items():
        n = int(np.sum(np.isfinite(column)))
        rows.append(ScoreRow(
            name=name, kind=kind, target=target, n=n,
            kendall=kendall(scores, column), kendall_ci=bootstrap_interval(scores, column, kendall, n_boot, seed),
            spearman=spearman(scores, column), spearman_ci=bootstrap_interval(scores, column, spearman, n_boot, seed),
            flags=list(flags), formula=formula, seconds=seconds, trivial=kind == "baseline" and is_trivial(name),
        ))
    return rows


def score_benchmark(
    bench: Benchmark,
    proxies: dict[str, Proxy] | None = None,
    baselines: list[str] | None = None,
    config: StatsConfig | None = None,
    split: str = "all",
    targets: list[str] | None = None,
    n_boot: int = 1000,
    probe_size: int = 16,
    limit: int | None = None,
    progress: bool = True,
    all_baselines: bool = False,
) -> ScoreReport:
    """Score proxy programs and named baselines on `bench` and return the report.

    Input independence is checked on a probe of `probe_size` candidates whose
    statistics are also computed on a second batch (batch seed + 1). `limit` keeps
    only the first N candidates of the split (quick looks and tests). `all_baselines`
    adds every baseline that applies to `bench` after the named ones.
    """
    # baselines build on scoring's neighbours; keep the import local
    from emq.baselines import baseline_costs, baseline_scores, benchmark_baselines, trivial_baselines

    proxies = proxies or {}
    baselines = list(baselines or [])
    if all_baselines:
        baselines += [b for b in benchmark_baselines(bench) if b not in baselines]
    config = config or StatsConfig()
    all_truth = bench.ground_truth()
    targets = bench.check_targets(targets) or list(all_truth)
    config, added_stats = stats_for_proxies(bench, proxies, config)
    check_proxies_fit(bench, proxies, config)
    idx = select_split(bench, split)[:limit]
    cands = [bench.candidates()[i] for i in idx]
    truth = {t: all_truth[t][idx] for t in targets}
    probe = np.arange(min(probe_size, len(cands)))
    other = dataclasses.replace(config, batch_seed=config.batch_seed + 1)

    rows: list[ScoreRow] = []
    failures: dict[str, dict[str, int]] = {}
    columns: dict[str, np.ndarray] = {}
    formulas: dict[str, str] = {}
    if proxies:
        all_scores = stream_scores(list(proxies.values()), bench, cands, config, progress=progress)
        probe_stats = load_or_compute(bench, [cands[i] for i in probe], other, progress=progress)
        trivial = baseline_scores(bench, trivial_baselines(bench), config, candidates=cands, progress=progress)
        for (name, proxy), (scores, fails) in zip(proxies.items(), all_scores):
            other_scores, _ = proxy_scores(proxy, probe_stats)
            flags = degeneracy_flags(scores)
            # A flag, not an exclusion: SynFlow is data-free and also overflows on a few cells (nonfinite).
            if CONSTANT not in flags and len(probe) > 1 and is_input_independent(scores[probe], other_scores):
                flags.append(INPUT_INDEPENDENT)
            if not flags:
                flags += trivial_flags(scores, trivial)
            failures[name] = dict(fails)
            rows += rows_for(name, "proxy", scores, truth, flags, proxy.formula(), n_boot)
            columns[name] = scores
            formulas[name] = proxy.formula()
    if baselines:
        main = baseline_scores(bench, baselines, config, candidates=cands, progress=progress)
        costs = baseline_costs(bench, baselines, config)
        for name in baselines:
            rows += rows_for(name, "baseline", main[name], truth, degeneracy_flags(main[name]), n_boot=n_boot,
                             seconds=costs.get(name))
            columns[f"baseline:{name}"] = main[name]
    rows += ceiling_rows(bench, cands, truth)
    batch = bench.batch(config.batch_seed, config.batch_size).describe()
    table = score_table(cands, truth, columns, {"benchmark": bench.name, "split": split, "limit": limit,
                                                "batch": batch, "proxies": formulas})
    return ScoreReport(
        benchmark=bench.name, split=split, n_candidates=len(cands), batch=batch,
        stats_config=config.describe() if hasattr(config, "describe") else dataclasses.asdict(config),
        rows=rows, failures=failures, table=table, added_stats=added_stats,
    )
