"""The evolutionary search for proxy programs: variation, screening, niche selection, elitism, resume.

One generation: the hall of fame (best distinct programs, at most one per niche)
is carried over unchanged; parents are drawn by tournament among niche
representatives and varied (subtree crossover, typed mutations); a share of fresh
random programs joins; new programs are screened on the probe networks and scored
on the search split by the pool; fitness is the rank correlation with each target
column, combined by mean or min. Programs already evaluated are looked up by
canonical hash, not scored again.

`log.jsonl` has one line per generation: `gen`, `best` / `median` fitness of the
valid programs in the population, `best_ever` (the hall of fame's best) and its
formula, `valid`, `niches` (distinct niches among the valid programs),
`evaluations` (programs screened this generation), `cache_hits` (known programs
not scored again), `rejections` (this generation's screenings by reason),
`seconds` (the generation's wall time, its checkpoint included), `time` (those
seconds by phase: `variation`, `screening` (static and probe screens, in this
process, while the pool already scores the survivors of earlier batches),
`evaluation` (waiting for the pool's scores on the search split, and fitness),
`selection` (niches, hall of fame), `checkpoint`) and
`programs_per_s` (evaluations / seconds). Timings are the only values that differ
between runs of the same seed.

Everything a generation depends on (population, hall of fame, evaluated programs,
random streams, log) is saved atomically after each generation, as JSON plus one
torch tensor file, so `resume=True` continues with exactly the results an
uninterrupted run would have produced.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from emq.atomic import check_not_inputs, check_output_path, write_json_atomic, write_text_atomic
from emq.errors import EMQUserError, StatUnavailableError
from emq.fitness import (
    TrivialChoice, beyond_trivial, bootstrap_interval, choose_best_trivial, get_metric, joint, partial_correlation,
)
from emq.proxy import Proxy
from emq.stats import NetworkStats
from emq.strict_json import loads_strict
from search import run_lock
from search.interrupt import stop_requested
from emq.evaluate import StackedStats, evaluate_stacked
from search.generate import Grammar, GrowConfig, random_program
from search.niches import NicheHallOfFame, count_niches, rank_vector, representatives, tournament
from search.operators import Limits, crossover, mutate, program
from search.pool import EvaluationPool, ShardedStats, StatsSource, one_thread, worker_device
from search.report import plot_evolution, plot_scatter
from search.rng import SearchRNG
from search.screening import UNDEFINED_FITNESS, Outcome, ProbeInputs, ScreenLimits, score_outcome, screen_probe

ENGINE = "emq-search/1"
STATE_FORMAT = "emq-search-state/1"
HOF_FORMAT = "emq-hall-of-fame/1"
CHECKPOINT_DIR = "checkpoint"
#: "partial" (default): min(plain, partialled on the best trivial predictor) (`emq.fitness.beyond_trivial`);
#: "residual": the partial correlation alone (rewards complements of the trivial predictor); "plain": the correlation.
FITNESS_MODES = ("partial", "residual", "plain")


class RunFolderError(EMQUserError, ValueError):
    """A run folder's hall_of_fame.json is not one this engine wrote; the message names the file."""


class ResumeError(EMQUserError, ValueError):
    """A run folder cannot be started or resumed as asked (it holds a run, or one with another config)."""


class SeedProxyError(EMQUserError, ValueError):
    """A `--seed-proxies` program the search cannot use (too large, or reads statistics it lacks)."""


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a search's results (with the statistics and ground truth it runs on).

    `targets` None means every ground-truth column. `stats` None means every
    statistic present in all search networks. `fresh_share` of each generation are
    new random programs; the hall of fame (`hof_size`) is carried over whole.
    `time_budget_s` bounds the projected seconds to score one program on the search
    split (the only timing-dependent rule: keep it generous for reproducible runs).
    `trivial_tau_limit` rejects programs whose probe ranking matches a trivial
    predictor (#params, bit counts, quantized loss: |Kendall| at or above it; 1
    disables), `arch_eta_limit` those whose probe scores are a function of one
    architecture hyperparameter (eta squared of the ranks; above 1 disables).
    `fitness` "partial" (the default) pays only for what a program adds beyond the
    best trivial predictor of each target, chosen on the search split, and never more
    than it ranks on its own: min(plain, partialled) Kendall or Spearman
    (`emq.fitness.beyond_trivial`); "residual" is the partialled value alone
    (`emq.fitness.partial_correlation`: it finds complements that rank badly alone);
    "plain" the plain rank correlation. Without trivial predictors all are the same.
    """

    population: int = 64
    generations: int = 20
    seed: int = 0
    metric: str = "kendall"
    joint: str = "mean"
    targets: tuple[str, ...] | None = None
    hof_size: int = 10
    fresh_share: float = 0.1
    cx_prob: float = 0.3
    mut_prob: float = 0.6
    tournament: int = 3
    max_size: int = 20
    max_depth: int = 7
    probe_size: int = 32
    time_budget_s: float = 60.0
    niche_threshold: float = 0.98
    reject_input_independent: bool = True
    trivial_tau_limit: float = 0.95
    arch_eta_limit: float = 0.99
    fitness: str = "partial"
    stats: tuple[str, ...] | None = None
    op_weights: tuple[tuple[str, float], ...] = ()
    heldout_fraction: float = 0.5
    split_seed: int = 0
    memo_size: int = 20000
    seed_formulas: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("targets", "stats", "seed_formulas"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        weights = self.op_weights.items() if isinstance(self.op_weights, Mapping) else self.op_weights
        object.__setattr__(self, "op_weights", tuple((str(k), float(v)) for k, v in weights))
        get_metric(self.metric)
        if self.joint not in ("mean", "min"):
            raise ValueError(f"joint must be 'mean' or 'min', got {self.joint!r}")
        if self.fitness not in FITNESS_MODES:
            raise ValueError(f"fitness must be one of {', '.join(FITNESS_MODES)}, got {self.fitness!r}")
        if self.population < 2:
            raise ValueError("population must be >= 2")
        if not 0 <= self.hof_size < self.population:
            raise ValueError("hof_size must be in [0, population)")
        if not 0 <= self.fresh_share <= 1 or not 0 <= self.cx_prob <= 1 or not 0 <= self.mut_prob <= 1:
            raise ValueError("fresh_share, cx_prob and mut_prob must be in [0, 1]")
        if self.cx_prob + self.mut_prob > 1:
            raise ValueError("cx_prob + mut_prob must be <= 1 (the rest is reproduction)")
        if self.probe_size < 3:
            raise ValueError("probe_size must be >= 3")
        GrowConfig(self.max_depth, self.max_size)  # validates the limits

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["op_weights"] = dict(self.op_weights)
        for name in ("targets", "stats", "seed_formulas"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SearchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown search config field(s): {sorted(unknown)}")
        return cls(**dict(data))

    def resume_conflicts(self, saved: "SearchConfig") -> list[str]:
        """Return the fields (other than `generations`, which may grow) that differ from a saved run's."""
        mine, theirs = self.to_json(), saved.to_json()
        return [k for k in mine if k != "generations" and mine[k] != theirs[k]]


# ------------------------------------------------------------- individuals
class Program:
    """An individual: a (simplified) program, its canonical hash, its evaluation record and fitness (`emq.ga`)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.hash = proxy.canonical_hash()
        self.record: dict[str, Any] | None = None
        self.fitness: float | None = None
        self.ranks: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Program({self.proxy.formula()!r}, fitness={self.fitness})"


def make_individual(proxy: Proxy, record: dict[str, Any] | None = None) -> Program:
    ind = Program(proxy)
    if record is not None:
        apply_record(ind, record)
    return ind


def apply_record(ind: Program, record: dict[str, Any]) -> None:
    """Set an individual's fitness and behaviour from its evaluation record."""
    ind.record = record
    if record.get("fitness") is not None:
        ind.fitness = float(record["fitness"])
        ind.ranks = rank_vector(np.asarray(record["probe"], dtype=np.float64))
    else:
        ind.fitness = None
        ind.ranks = None


def _entry(ind: Any) -> dict[str, Any]:
    return {"formula": ind.proxy.formula(), "record": ind.record}


def _individual(entry: Mapping[str, Any]) -> Any:
    return make_individual(Proxy.from_formula(entry["formula"]).simplified(), entry["record"])


@dataclass
class SearchResult:
    """What `run_search` gives back (everything is also on disk in `run_dir`)."""

    run_dir: Path
    hall_of_fame: list[dict[str, Any]]
    log: list[dict[str, Any]]
    generation: int
    finished: bool
    #: Per target: the trivial predictor the search's fitness was measured beyond (chosen on the search split).
    best_trivial: dict[str, TrivialChoice] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any] | None:
        return self.hall_of_fame[0] if self.hall_of_fame else None


@dataclass
class _State:
    generation: int
    population: list[Any]
    hof: NicheHallOfFame
    memo: "OrderedDict[str, dict[str, Any]]"
    rng: SearchRNG
    log: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------- the search
def run_search(
    search_stats: Sequence[NetworkStats],
    probe_stats_other_batch: Sequence[NetworkStats] | None,
    truth: Mapping[str, np.ndarray],
    config: SearchConfig,
    run_dir: str | Path,
    pool: EvaluationPool | None = None,
    progress: bool = True,
    resume: bool = False,
    probe_index: Sequence[int] | None = None,
    heldout: tuple[Sequence[NetworkStats], Mapping[str, np.ndarray]] | None = None,
    sources: tuple[StatsSource | None, StatsSource | None] = (None, None),
    stop_after: int | None = None,
    on_generation: Callable[[int, dict[str, Any]], None] | None = None,
    command: str | None = None,
    trivial: Mapping[str, np.ndarray] | None = None,
    features: Mapping[str, np.ndarray] | None = None,
) -> SearchResult:
    """Evolve proxy programs on `search_stats` against `truth` and return the hall of fame.

    `probe_stats_other_batch[i]` holds network `probe_index[i]` of `search_stats`
    (default: the first ones) on a second batch; it serves the input-independence
    screen (None skips that screen). `truth` maps column -> array aligned with
    `search_stats`. `pool` evaluates programs (None: serially in this process);
    `sources` lets process pools read the statistics from existing files instead of
    a spilled copy. `heldout` = (statistics, truth) scores the final hall of fame on
    networks the search never saw. `stop_after` ends this call after that
    generation (the run stays resumable); `on_generation(gen, log_row)` is called
    after each generation's checkpoint. `trivial` maps each trivial predictor to its
    values on the search networks (#params is added from the statistics), `features`
    each architecture hyperparameter; both feed the trivial-equivalent screen, and the
    best trivial predictor per target is the control of the partial fitness.
    """
    run_dir = Path(run_dir)
    n = len(search_stats)
    truth = {k: np.asarray(v, dtype=np.float64) for k, v in truth.items()}
    targets = list(config.targets or truth)
    missing = [t for t in targets if t not in truth]
    if missing:
        raise KeyError(f"unknown target(s) {missing}; ground-truth columns: {', '.join(truth)}")
    for t in targets:
        if len(truth[t]) != n:
            raise ValueError(f"target {t!r} has {len(truth[t])} values for {n} search networks")
    if probe_index is None:
        k = len(probe_stats_other_batch) if probe_stats_other_batch is not None else min(config.probe_size, n)
        probe_index = list(range(k))
    stats_names = list(config.stats or sorted(set.intersection(*(s.available() for s in search_stats))))
    grammar = Grammar(stats_names, GrowConfig(config.max_depth, config.max_size, op_weights=dict(config.op_weights)))
    run_lock.acquire(run_dir)  # before any write: a second search on this folder fails here, at once
    own_pool = pool is None
    pool = pool or EvaluationPool("serial")
    search_set = None
    try:
        limits = ScreenLimits(config.max_size, config.time_budget_s, config.reject_input_independent,
                              config.trivial_tau_limit, config.arch_eta_limit)
        predictors = dict(trivial or {})
        predictors.setdefault("params", np.array([float(sum(s.params.values())) for s in search_stats]))
        for name, values in [*predictors.items(), *(features or {}).items()]:
            if len(values) != n:
                raise ValueError(f"trivial predictor / feature {name!r} has {len(values)} values for {n} search networks")
        index = list(probe_index)
        # The probe is small: it is screened here; only the survivors go to the pool's shards of the search set.
        device = worker_device(pool.device)
        probe = ProbeInputs.build(
            StackedStats([search_stats[i] for i in index], device),
            StackedStats(probe_stats_other_batch, device) if probe_stats_other_batch is not None else None, n,
            probe_trivial={k: np.asarray(v, dtype=np.float64)[index] for k, v in predictors.items()},
            probe_features={k: np.asarray(v, dtype=np.float64)[index] for k, v in (features or {}).items()})
        search_set = pool.attach(search_stats, sources[0])
        choices = choose_best_trivial(predictors, {t: truth[t] for t in targets}, get_metric(config.metric))
        engine = _Engine(config, grammar, {t: truth[t] for t in targets}, pool, search_set, probe, limits, run_dir,
                         {t: (c, c.oriented(predictors[c.name])) for t, c in choices.items()})
        state = engine.start(resume)
        bar = tqdm(total=config.generations, initial=min(state.generation + 1, config.generations),
                   desc="search", unit="gen", disable=not progress, leave=False)
        try:
            while state.generation + 1 < config.generations:
                if stop_after is not None and state.generation >= stop_after:
                    break
                if stop_requested():  # SIGTERM in a batch job: the last generation is checkpointed
                    break
                row = engine.step(state)
                bar.update(1)
                bar.set_postfix(best=_short(row["best_ever"]), median=_short(row["median"]), niches=row["niches"],
                                rejected=sum(row["rejections"].values()))
                if on_generation is not None:
                    on_generation(state.generation, row)
        finally:
            bar.close()
        finished = state.generation + 1 >= config.generations
        hall = engine.finish(state, heldout, command)
        return SearchResult(run_dir, hall, state.log, state.generation, finished, choices)
    finally:
        if search_set is not None:
            pool.detach(search_set)
        if own_pool:
            pool.close()
        run_lock.release(run_dir)


#: Programs screened before their survivors are sent to the pool (the pool scores while the next batch is screened).
SCREEN_BATCH = 8


class _Clock:
    """Seconds of one generation by phase (the log row's `time`)."""

    PHASES = ("variation", "screening", "evaluation", "selection", "checkpoint")

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    def lap(self, phase: str) -> None:
        """Add the time since the previous lap to `phase`."""
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now

    def fill(self, row: dict[str, Any]) -> None:
        total = self.last - self.start
        row["seconds"] = round(total, 4)
        row["time"] = {k: round(v, 4) for k, v in self.seconds.items()}
        row["programs_per_s"] = round(row["evaluations"] / total, 2) if total > 0 else None


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


class _Engine:
    """One search's fixed parts (config, grammar, truth, pool) and the generation step."""

    def __init__(self, config: SearchConfig, grammar: Grammar, truth: dict[str, np.ndarray], pool: EvaluationPool,
                 search_set: ShardedStats, probe: ProbeInputs, screen_limits: ScreenLimits, run_dir: Path,
                 controls: dict[str, tuple[TrivialChoice, np.ndarray]]) -> None:
        self.config = config
        self.controls = controls  # per target: the best trivial predictor and its oriented values
        self.grammar = grammar
        self.truth = truth
        self.pool = pool
        self.search_set = search_set
        self.probe = probe
        self.screen_limits = screen_limits
        self.run_dir = run_dir
        self.metric = get_metric(config.metric)
        self.limits = Limits(config.max_size, config.max_depth)

    # ------------------------------------------------------------ start
    def start(self, resume: bool) -> _State:
        state_path = self.run_dir / CHECKPOINT_DIR / "state.json"
        if state_path.exists():
            if not resume:
                raise ResumeError(f"{self.run_dir} already holds a search; resume it (resume=True / --resume) "
                                  "or choose another folder")
            return self._restore(state_path)
        seen: set[str] = set()
        population = self._seeded(seen)  # checked before the first write: a bad seed leaves no half-started run
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        rng = SearchRNG.from_seed(self.config.seed)
        state = _State(-1, [], NicheHallOfFame(self.config.hof_size, self.config.niche_threshold), OrderedDict(), rng)
        clock = _Clock()
        population += self._fresh(state, self.config.population - len(population), seen)
        clock.lap("variation")
        stats = self._evaluate(state, population, clock)
        self._advance(state, population, stats, clock)
        return state

    # ------------------------------------------------------------- step
    def step(self, state: _State) -> dict[str, Any]:
        """Breed, evaluate and select one generation; checkpoint; return its log row."""
        clock = _Clock()
        cfg, rng = self.config, state.rng
        elites = [make_individual(m.proxy, m.record) for m in state.hof]
        seen = {e.hash for e in elites}
        valid = [ind for ind in state.population if ind.fitness is not None]
        reps = representatives(valid, cfg.niche_threshold)
        clock.lap("selection")
        n_fresh = int(round(cfg.fresh_share * cfg.population)) if reps else cfg.population - len(elites)
        n_off = max(0, cfg.population - len(elites) - n_fresh)
        offspring: list[Any] = []
        attempts = 0
        while reps and len(offspring) < n_off and attempts < 20 * max(1, n_off):
            attempts += 1
            r = rng.py.random()
            if r < cfg.cx_prob:
                a, b = tournament(reps, 2, rng.py, cfg.tournament)
                kids = list(crossover(a.proxy, b.proxy, rng.py, self.limits))
            elif r < cfg.cx_prob + cfg.mut_prob:
                (a,) = tournament(reps, 1, rng.py, cfg.tournament)
                kids = [mutate(a.proxy, rng.py, self.grammar, self.limits)[0]]
            else:
                (a,) = tournament(reps, 1, rng.py, cfg.tournament)
                kids = [a.proxy]
            for kid in kids:
                ind = make_individual(kid)
                known = state.memo.get(ind.hash)
                if known is not None and known["fitness"] is None:
                    continue  # already screened out: do not spend a population slot on it again
                if len(offspring) < n_off and ind.hash not in seen:
                    seen.add(ind.hash)
                    offspring.append(ind)
        fresh = self._fresh(state, cfg.population - len(elites) - len(offspring), seen)
        population = elites + offspring + fresh
        clock.lap("variation")
        stats = self._evaluate(state, offspring + fresh, clock)
        return self._advance(state, population, stats, clock)

    def _seeded(self, seen: set[str]) -> list[Any]:
        """Return the individuals of `config.seed_formulas` (programs reused from other searches), deduplicated."""
        out = []
        for formula in self.config.seed_formulas[: self.config.population]:
            tree = Proxy.from_formula(formula).simplified()
            if tree.size > self.config.max_size or tree.depth > self.config.max_depth:
                raise SeedProxyError(f"seed proxy {formula!r} has {tree.size} nodes and depth {tree.depth}; this "
                                     f"search allows at most {self.config.max_size} nodes and depth "
                                     f"{self.config.max_depth}: seed a smaller program")
            missing = sorted(tree.stats_needed - set(self.grammar.stats))
            if missing:
                raise StatUnavailableError(f"seed proxy {formula!r} uses statistic(s) {missing} that this search's networks "
                                 f"lack; available: {', '.join(self.grammar.stats)}")
            ind = make_individual(tree)
            if ind.hash not in seen:
                seen.add(ind.hash)
                out.append(ind)
        return out

    def _fresh(self, state: _State, k: int, seen: set[str]) -> list[Any]:
        out = []
        for _ in range(k):
            ind = None
            for _ in range(20):  # prefer programs never evaluated before
                ind = make_individual(program(random_program(state.rng.py, self.grammar)))
                if ind.hash not in seen and ind.hash not in state.memo:
                    break
            if ind.hash in seen:
                continue
            seen.add(ind.hash)
            out.append(ind)
        return out

    # ------------------------------------------------------- evaluation
    def _evaluate(self, state: _State, individuals: Sequence[Any], clock: "_Clock") -> dict[str, Any]:
        todo: dict[str, Any] = {}
        for ind in individuals:
            if ind.hash not in state.memo and ind.hash not in todo:
                todo[ind.hash] = ind
        # Screened here in batches; each batch's survivors go to the pool at once, so the workers score
        # them while the next batch is screened (cores do not wait for one another).
        outcomes: list[Outcome] = []
        jobs = []
        items = list(todo.values())
        with torch.no_grad(), one_thread():
            for start in range(0, len(items), SCREEN_BATCH):
                batch = [screen_probe(ind.proxy, self.probe, self.screen_limits)
                         for ind in items[start: start + SCREEN_BATCH]]
                outcomes += batch
                passed = [(ind, out) for ind, out in zip(items[start:], batch) if out.reason is None]
                if passed:
                    jobs.append((passed, self.pool.submit(self.search_set, [ind.proxy for ind, _ in passed])))
        clock.lap("screening")
        for passed, job in jobs:
            for (_, out), (scores, failures) in zip(passed, job.result()):
                score_outcome(out, scores, failures)
        rejections: Counter = Counter()
        seconds = 0.0
        for ind, outcome in zip(todo.values(), outcomes):
            record = self._record(outcome)
            state.memo[ind.hash] = record
            seconds += outcome.seconds
            if record["reason"] is not None:
                rejections[record["reason"]] += 1
        for ind in individuals:
            state.memo.move_to_end(ind.hash)
            apply_record(ind, state.memo[ind.hash])
        while len(state.memo) > self.config.memo_size:
            state.memo.popitem(last=False)
        clock.lap("evaluation")
        return {"evaluations": len(todo), "cache_hits": len(individuals) - len(todo),
                "rejections": dict(sorted(rejections.items())), "eval_seconds": seconds}

    def _record(self, outcome: Outcome) -> dict[str, Any]:
        if outcome.reason is not None:
            return {"reason": outcome.reason, "fitness": None, "targets": {}, "probe": None}
        plain = {t: self.metric(outcome.scores, col) for t, col in self.truth.items()}
        per = dict(plain)
        if self.config.fitness != "plain":
            beyond = beyond_trivial if self.config.fitness == "partial" else partial_correlation
            per = {t: beyond(self.metric, outcome.scores, col, self.controls[t][1])
                   if t in self.controls else plain[t] for t, col in self.truth.items()}
        value = joint(list(per.values()), self.config.joint)
        if not math.isfinite(value):
            return {"reason": UNDEFINED_FITNESS, "fitness": None, "targets": {}, "probe": None}
        return {"reason": None, "fitness": value, "targets": per, "plain": plain,
                "probe": [float(x) for x in outcome.probe]}

    # ------------------------------------------------- bookkeeping
    def _advance(self, state: _State, population: list[Any], stats: dict[str, Any], clock: "_Clock") -> dict[str, Any]:
        state.generation += 1
        state.population = population
        valid = [ind for ind in population if ind.fitness is not None]
        state.hof.update(valid)
        values = [ind.fitness for ind in valid]
        row = {
            "gen": state.generation,
            "best": max(values) if values else None,
            "median": float(np.median(values)) if values else None,
            "best_ever": state.hof[0].fitness if len(state.hof) else None,
            "best_formula": state.hof[0].proxy.formula() if len(state.hof) else None,
            "population": len(population),
            "valid": len(valid),
            "niches": count_niches(valid, self.config.niche_threshold),
            "evaluations": stats["evaluations"],
            "cache_hits": stats["cache_hits"],
            "rejections": stats["rejections"],
        }
        clock.lap("selection")
        state.log.append(row)
        clock.fill(row)  # provisional in the checkpoint (no checkpoint time yet); final in log.jsonl
        self._checkpoint(state)
        clock.lap("checkpoint")
        clock.fill(row)
        self._write_log(state)
        return row

    def _checkpoint(self, state: _State) -> None:
        folder = self.run_dir / CHECKPOINT_DIR
        torch_file = f"rng_torch-{state.generation:05d}.pt"
        # The torch file is written first and named by the state: state.json is the single commit point.
        state.rng.save_torch(folder / torch_file)
        data = {
            "format": STATE_FORMAT,
            "engine": ENGINE,
            "generation": state.generation,
            "config": self.config.to_json(),
            "population": [_entry(ind) for ind in state.population],
            "hall_of_fame": [_entry(ind) for ind in state.hof],
            "memo": [[h, r] for h, r in state.memo.items()],
            "rng": state.rng.state_json(),
            "torch_rng": torch_file,
            "log": state.log,
        }
        write_json_atomic(folder / "state.json", data)
        for old in folder.glob("rng_torch-*.pt"):
            if old.name != torch_file:
                old.unlink(missing_ok=True)

    def _write_log(self, state: _State) -> None:
        write_text_atomic(self.run_dir / "log.jsonl", "".join(json.dumps(row) + "\n" for row in state.log))

    def _restore(self, path: Path) -> _State:
        """Return the checkpointed state; a damaged checkpoint or a contradicting config is a ResumeError."""
        try:
            return self._restore_checked(path)
        except ResumeError:
            raise
        except pickle.UnpicklingError:
            raise ResumeError(f"{path.parent}: the random-state file was refused: it holds more than plain tensors "
                              "(nothing in it was run); restore the run folder from a copy or start a new one") from None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError, EOFError, OSError) as err:
            detail = str(err).splitlines()[0][:160] if str(err) else ""
            raise ResumeError(f"{path.parent}: the checkpoint is damaged ({type(err).__name__}: {detail}); "
                              "restore the run folder from a copy, or start a new run folder") from None

    def _restore_checked(self, path: Path) -> _State:
        data = loads_strict(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ResumeError(f"{path}: not an {STATE_FORMAT} checkpoint; restore the run folder or start a new one")
        saved = SearchConfig.from_json(data["config"])
        conflicts = self.config.resume_conflicts(saved)
        if conflicts:
            mine, theirs = self.config.to_json(), saved.to_json()
            diff = "; ".join(f"{k}: checkpoint {theirs[k]!r}, asked {mine[k]!r}" for k in conflicts)
            raise ResumeError(f"cannot resume {self.run_dir}: the settings contradict its checkpoint ({diff}); "
                              "only `generations` may change: drop the contradicting options or start a new run folder")
        rng = SearchRNG.restore(data["rng"], path.parent / data["torch_rng"])
        hof = NicheHallOfFame(self.config.hof_size, self.config.niche_threshold)
        hof.restore([_individual(e) for e in data["hall_of_fame"]])
        memo = OrderedDict((h, r) for h, r in data["memo"])
        state = _State(int(data["generation"]), [_individual(e) for e in data["population"]], hof, memo, rng,
                       list(data["log"]))
        if self.config.generations != saved.generations:
            self._write_config()
        return state

    def _write_config(self) -> None:
        write_json_atomic(self.run_dir / "config.json", {
            "search": self.config.to_json(), "stats": self.grammar.stats, "targets": list(self.truth),
            "engine": ENGINE, "best_trivial": {t: c.to_json() for t, (c, _) in self.controls.items()}})

    # ------------------------------------------------------------ finish
    def finish(self, state: _State, heldout: tuple[Sequence[NetworkStats], Mapping[str, np.ndarray]] | None,
               command: str | None) -> list[dict[str, Any]]:
        """Write hall_of_fame.json and evolution.png (and scatter.png with held-out data); return the hall."""
        hall = [self.hall_entry(rank, ind) for rank, ind in enumerate(state.hof, start=1)]
        if heldout is not None and hall:
            stats_list, truth = heldout
            stacked = StackedStats(stats_list, worker_device(self.pool.device))
            for entry in hall:
                scores, failures = evaluate_stacked(Proxy.from_formula(entry["formula"]), stacked)
                entry["heldout_scores"] = scores
                add_heldout(entry, scores, truth, self.config.metric, dict(failures))
            best = hall[0]
            target = next(iter(truth))
            plot_scatter(best["heldout_scores"], np.asarray(truth[target]), self.run_dir / "scatter.png",
                         f"{best['formula']}\nheld-out {self.config.metric} = {best['heldout'][target]:+.3f}",
                         ylabel=target)
        write_hall_of_fame(self.run_dir, hall, self.config, command)
        plot_evolution(state.log, self.run_dir / "evolution.png", self.config.metric)
        return hall

    def hall_entry(self, rank: int, ind: Any) -> dict[str, Any]:
        rec = ind.record
        return {"rank": rank, "formula": ind.proxy.formula(), "hash": ind.hash, "fitness": rec["fitness"],
                "search": dict(rec["targets"]), "search_plain": dict(rec.get("plain", rec["targets"])),
                "size": ind.proxy.size}


def add_heldout(entry: dict[str, Any], scores: np.ndarray, truth: Mapping[str, np.ndarray], metric: str,
                failures: dict[str, int] | None = None, n_boot: int = 1000) -> None:
    """Add held-out correlations (with 95% bootstrap intervals) per target to a hall-of-fame entry."""
    fn = get_metric(metric)
    entry["heldout"] = {t: fn(scores, np.asarray(col)) for t, col in truth.items()}
    entry["heldout_ci"] = {t: list(bootstrap_interval(scores, np.asarray(col), fn, n_boot)) for t, col in truth.items()}
    if failures:
        entry["heldout_failures"] = failures


def write_hall_of_fame(run_dir: Path, hall: list[dict[str, Any]], config: SearchConfig, command: str | None,
                       meta: Mapping[str, Any] | None = None) -> Path:
    """Write hall_of_fame.json: each program with its fitness per target and its `emq-proxy/1` JSON."""
    programs = []
    for entry in hall:
        clean = {k: v for k, v in entry.items() if k != "heldout_scores"}
        proxy_meta = {"fitness": {"metric": config.metric, "search": entry["search"]}, "seed": config.seed,
                      "engine": ENGINE, "rank": entry["rank"], **dict(meta or {})}
        if "heldout" in entry:
            proxy_meta["fitness"]["heldout"] = entry["heldout"]
        clean["proxy"] = Proxy.from_formula(entry["formula"], meta=proxy_meta).to_json()
        programs.append(json_finite(clean))
    data = {"format": HOF_FORMAT, "engine": ENGINE, "metric": config.metric, "joint": config.joint,
            "seed": config.seed, "command": command, **dict(meta or {}), "programs": programs}
    return write_json_atomic(run_dir / "hall_of_fame.json", data)


def json_finite(value: Any) -> Any:
    """Return `value` with non-finite floats replaced by None (JSON has no NaN: undefined correlations are null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_finite(v) for v in value]
    return value


def load_hall_of_fame(run_dir: str | Path) -> dict[str, Any]:
    """Return the content of a run's hall_of_fame.json."""
    path = Path(run_dir) / "hall_of_fame.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished `emq search` run folder?")
    try:
        data = loads_strict(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # syntax, duplicate keys, nesting, not UTF-8
        raise RunFolderError(f"{path}: not valid JSON ({err}); the file is damaged, rerun or restore it") from None
    if not isinstance(data, dict) or data.get("format") != HOF_FORMAT:
        found = repr(data.get("format")) if isinstance(data, dict) else f"absent: the file holds a {type(data).__name__}"
        raise RunFolderError(f"{path}: not an {HOF_FORMAT} file (field 'format' is {found}); "
                             "point to a folder written by `emq search`")
    programs = data.get("programs")
    if not isinstance(programs, list) or not all(isinstance(p, dict) and "proxy" in p for p in programs):
        raise RunFolderError(f"{path}: field 'programs' must be a list of objects with a 'proxy'; the file is "
                             "damaged, rerun or restore it")
    return data


def export_run(run_dir: str | Path, top: int = 1, out: str | Path = "proxy.json") -> list[Path]:
    """Save the `top` best programs of a run as proxy JSON files and return their paths.

    With `top` 1 the file is `out`; with more, `out`'s stem gets the rank
    (`proxy-1.json`, `proxy-2.json`, ...).
    """
    out = Path(out)
    if top < 1:
        raise RunFolderError(f"top must be at least 1, got {top}")
    proxies = export_proxies(run_dir, top)
    if not proxies:
        raise RunFolderError(f"{run_dir}: the hall of fame is empty (no program passed screening)")
    if len(proxies) == 1 and top == 1:
        paths = [out]
    else:
        paths = [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, len(proxies) + 1)]
    # Everything is checked before the first write, so a refused export leaves no partial set behind,
    # and no output may land on a file of the run folder it reads (its hall of fame, config, checkpoint).
    for path in paths:
        check_output_path(path)
    check_not_inputs(paths, [p for p in Path(run_dir).rglob("*") if p.is_file()])
    return [p.save(path) for p, path in zip(proxies, paths)]


def export_proxies(run_dir: str | Path, top: int = 1) -> list[Proxy]:
    """Return the `top` best programs of a run as Proxy objects (meta: fitness per target, seed, engine)."""
    data = load_hall_of_fame(run_dir)
    programs = data["programs"][: max(0, top)]
    return [Proxy.from_json(p["proxy"], source=f"{run_dir}/hall_of_fame.json") for p in programs]
