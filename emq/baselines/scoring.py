"""Scoring baselines on a benchmark's candidates: program baselines from the statistics cache, model
baselines on the networks with their per-candidate scores cached on disk beside the statistics."""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import torch
from tqdm.auto import tqdm

from emq.atomic import write_json_atomic
from emq.baselines.registry import (
    ARCH_PREFIX, Baseline, BaselineContext, BaselineNotApplicableError, UnknownBaselineError, get_baseline,
    list_baselines,
)
from emq.bench.base import Batch, Benchmark, Candidate
from emq.evaluate import StackedStats
from emq.paths import cache_dir
from emq.proxy import Proxy, ProxyEvaluationError
from emq.stats import STATS
from emq.stats.cache import (
    StatsConfig, bench_fields, calibration_inputs, config_key, iter_stats, safe_name,
)
from emq.stats.compute import prepare_network


MODEL_SCORES_FORMAT = "emq-baseline-scores/1"


def baseline_scores(
    bench: Benchmark,
    names: Sequence[str],
    config: StatsConfig | None = None,
    progress: bool = True,
    candidates: Sequence[Candidate] | None = None,
    cache_root: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Return each named baseline's scores, aligned with `candidates` (default: all of `bench`'s).

    Program baselines are evaluated on the cached statistics (`iter_stats`: one
    candidate in memory at a time; a config whose explicit stat set lacks what they
    need is extended for them); model baselines are computed per candidate and cached.
    A failed evaluation gives NaN.
    """
    config = config or StatsConfig()
    cands = list(candidates) if candidates is not None else bench.candidates()
    arch = {n: arch_scores(bench, n, cands) for n in names if n.startswith(ARCH_PREFIX)}
    entries = [get_baseline(n) for n in names if n not in arch]
    wrong = [e.name for e in entries if not e.applies_to(bench)]
    if wrong:
        fitting = ", ".join(b.name for b in list_baselines(bench.family) if b.applies_to(bench))
        why = " (it needs a benchmark with a distillation teacher)" if all(
            bench.family in get_baseline(n).families for n in wrong) else ""
        raise BaselineNotApplicableError(f"baseline(s) {wrong} do not apply to {bench.name}{why}; applicable: {fitting}")
    out: dict[str, np.ndarray] = {}
    programs = {e.name: e.proxy() for e in entries if e.kind == "program"}
    # Programs of the per-(layer, bits) table alone read it without any per-configuration pass or file.
    from_table = {n: p for n, p in programs.items() if p.stats_needed and all(STATS[s].per_layer_bits
                                                                                for s in p.stats_needed)}
    for group in (from_table, {n: p for n, p in programs.items() if n not in from_table}):
        if not group:
            continue
        needed = set().union(*(p.stats_needed for p in group.values()))
        stats_config = config
        if group is from_table or (config.stat_names is not None and not needed <= set(config.stat_names)):
            # Only what the baselines read: extending the caller's set would recompute all of it under a new
            # cache key (300 NB201 cells of structured statistics at batch 64 again, for #params and FLOPs).
            stats_config = dataclasses.replace(config, stat_names=tuple(sorted(needed)))
        # One candidate's statistics in memory at a time: a ViT's are tens to hundreds of MB.
        rows = [_evaluate_all(list(group.values()), stats)
                for stats in iter_stats(bench, cands, stats_config, progress=progress, cache_root=cache_root)]
        table = np.array(rows, dtype=np.float64).reshape(len(cands), len(group))
        for k, name in enumerate(group):
            out[name] = table[:, k]
    for entry in entries:
        if entry.kind == "model":
            out[entry.name] = model_baseline_scores(bench, entry, cands, config, progress, cache_root)
    out.update(arch)
    return {n: out[n] for n in names}


def arch_scores(bench: Benchmark, name: str, candidates: Sequence[Candidate]) -> np.ndarray:
    """Return the values of architecture hyperparameter `arch:<feature>` for `candidates` (higher = larger)."""
    feature = name[len(ARCH_PREFIX):]
    values = []
    for cand in candidates:
        features = bench.arch_features(cand)
        if feature not in features:
            known = ", ".join(ARCH_PREFIX + k for k in sorted(features)) or "none (no arch records)"
            raise UnknownBaselineError(f"unknown baseline {name!r} for {bench.name}; its arch baselines: {known}")
        values.append(features[feature])
    return np.asarray(values, dtype=np.float64)


def _evaluate(proxy: Proxy, stats: Any, stacked: StackedStats | None = None) -> float:
    try:
        return proxy.evaluate(stats, stacked=stacked)
    except ProxyEvaluationError:
        return math.nan


def _evaluate_all(programs: Sequence[Proxy], stats: Any) -> list[float]:
    """Return each program's score on one network, stacked once for all of them (the same scores as one by one)."""
    stacked = StackedStats([stats]) if len(programs) > 1 else None
    return [_evaluate(proxy, stats, stacked) for proxy in programs]


def baseline_cache_path(bench: Benchmark, baseline: Baseline, config: StatsConfig,
                        cache_root: str | Path | None = None) -> tuple[Path, str]:
    """Return (file, key) of a model baseline's cached scores: the stats key scheme, stat-only fields neutral."""
    batch = bench.batch(config.batch_seed, config.batch_size)
    neutral = StatsConfig(batch_seed=config.batch_seed, batch_size=config.batch_size, init_seed=config.init_seed)
    key = config_key(bench.name, neutral, bench_fields(bench, batch))
    root = Path(cache_root) if cache_root is not None else cache_dir()
    return root / safe_name(bench.name) / key / f"baseline-{safe_name(baseline.name)}.json", key


def model_baseline_scores(
    bench: Benchmark,
    baseline: Baseline,
    candidates: Sequence[Candidate],
    config: StatsConfig,
    progress: bool = True,
    cache_root: str | Path | None = None,
    save_every_s: float = 30.0,
) -> np.ndarray:
    """Return a model baseline's scores for `candidates`, computing (and caching) those not on disk."""
    if baseline.fn is None:
        raise TypeError(f"baseline {baseline.name!r} is a program baseline")
    path, key = baseline_cache_path(bench, baseline, config, cache_root)
    cached = _read_model_scores(path, key, baseline)
    batch = bench.batch(config.batch_seed, config.batch_size)
    device = torch.device(config.resolved_device())
    run_batch = Batch(batch.inputs.to(device), batch.labels.to(device), batch.source, batch.seed)
    calib = calibration_inputs(bench)
    act_bits = getattr(bench, "act_bits", 8)
    ctx = BaselineContext(device=device, seed=config.batch_seed, act_bits=act_bits,
                          calibration=bench.calibration_batch(), teacher=bench.teacher())
    todo = [c for c in candidates if _score_key(c) not in cached]
    last_save = time.monotonic()
    try:
        for cand in tqdm(todo, desc=f"{baseline.name} {bench.name}", unit="net", disable=not progress or not todo,
                         leave=False):
            start = time.perf_counter()
            model = bench.build_model(cand, init_seed=config.init_seed)
            net = prepare_network(model, cand.bits, act_bits=act_bits, calib_inputs=calib,
                                  fallback_calib=batch.inputs, device=device)
            cand_ctx = dataclasses.replace(ctx, float_model=model.to(device), memo=ctx.memo)
            try:
                cached[_score_key(cand)] = float(baseline.fn(net, run_batch, cand.bits, cand_ctx))
            except (torch.linalg.LinAlgError, FloatingPointError, ZeroDivisionError) as err:
                warnings.warn(f"baseline {baseline.name} failed on candidate {cand.id}: {err}; scored NaN", stacklevel=2)
                cached[_score_key(cand)] = math.nan
            cached.seconds[_score_key(cand)] = time.perf_counter() - start
            if time.monotonic() - last_save > save_every_s:
                _write_model_scores(path, key, baseline, batch, cached)
                last_save = time.monotonic()
    finally:
        if todo:
            _write_model_scores(path, key, baseline, batch, cached)
    return np.array([cached[_score_key(c)] for c in candidates], dtype=np.float64)


def _score_key(candidate: Candidate) -> str:
    """Return a candidate's key in a model baseline's score file: its id and its fingerprint (bits or arch)."""
    return f"{candidate.id}@{candidate.fingerprint()}"


def baseline_costs(bench: Benchmark, names: Sequence[str], config: StatsConfig,
                   cache_root: str | Path | None = None) -> dict[str, float]:
    """Return the measured seconds per candidate of the model baselines among `names` (program ones share the cache)."""
    out = {}
    for name in names:
        if name.startswith(ARCH_PREFIX):
            out[name] = 0.0
        elif get_baseline(name).kind == "model":
            cost = model_baseline_cost(bench, get_baseline(name), config, cache_root)
            if cost is not None:
                out[name] = cost
    return out


def baseline_seconds(bench: Benchmark, names: Sequence[str], config: StatsConfig, candidates: Sequence[Candidate],
                     cache_root: str | Path | None = None) -> dict[str, np.ndarray]:
    """Return the recorded seconds of each model baseline among `names` on each of `candidates` (NaN: not recorded).

    `baseline_costs` is the mean over every candidate a score file holds; this is the cost
    of the candidates named, so tables built in chunks can keep it per candidate.
    """
    out = {}
    for name in names:
        if name.startswith(ARCH_PREFIX) or get_baseline(name).kind != "model":
            continue
        path, key = baseline_cache_path(bench, get_baseline(name), config, cache_root)
        seconds = _read_model_scores(path, key, get_baseline(name)).seconds
        out[name] = np.array([seconds.get(_score_key(c), math.nan) for c in candidates], dtype=np.float64)
    return out


class _Scores(dict):
    """Cached scores by candidate id, with the seconds each took (the baseline's cost, kept beside it)."""

    def __init__(self, scores: dict[str, float] | None = None, seconds: dict[str, float] | None = None) -> None:
        super().__init__(scores or {})
        self.seconds: dict[str, float] = dict(seconds or {})


def model_baseline_cost(bench: Benchmark, baseline: Baseline, config: StatsConfig,
                        cache_root: str | Path | None = None) -> float | None:
    """Return a model baseline's mean seconds per candidate as measured when its scores were cached (None if unknown)."""
    path, key = baseline_cache_path(bench, baseline, config, cache_root)
    seconds = _read_model_scores(path, key, baseline).seconds
    return float(np.mean(list(seconds.values()))) if seconds else None


def _write_model_scores(path: Path, key: str, baseline: Baseline, batch: Batch, scores: _Scores) -> None:
    # JSON has no NaN/inf: non-finite scores are written as the strings "nan", "inf", "-inf".
    data = {
        "format": MODEL_SCORES_FORMAT,
        "baseline": baseline.name,
        "version": baseline.version,
        "key": key,
        "batch": batch.describe(),
        "scores": {k: (v if math.isfinite(v) else str(v)) for k, v in scores.items()},
        "seconds": {k: round(v, 6) for k, v in scores.seconds.items()},
    }
    write_json_atomic(path, data)


def _read_model_scores(path: Path, key: str, baseline: Baseline) -> _Scores:
    if not path.exists():
        return _Scores()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MODEL_SCORES_FORMAT or data.get("key") != key:
            raise ValueError("written for another configuration")
        if data.get("version") != baseline.version:
            return _Scores()  # the baseline's code changed: recompute silently, this is expected
        return _Scores({str(k): float(v) for k, v in data["scores"].items()},
                       {str(k): float(v) for k, v in data.get("seconds", {}).items()})
    except Exception as err:  # an unreadable cache is recomputed, never fatal
        warnings.warn(f"baseline cache file {path} is unreadable ({type(err).__name__}: {err}); recomputing it",
                      stacklevel=3)
        return _Scores()
