"""The evolutionary search for proxy programs on DEAP: variation, screening, niche selection, elitism, aging, resume.

The loop runs on a DEAP toolbox (`_Engine._attach`): `select` is DEAP's `selTournament`
among niche representatives (`search.niches`), drawing from the run's own stream of
DEAP's global-random draws (`emq.ga.drawing_from`, saved in the checkpoint), `mate` the
typed subtree crossover, `mutate` the typed mutations and `generate` random programs
(`search.operators`, `search.generate`, drawing from the run's variation stream). The
hall of fame is DEAP's with at most one program per niche (`search.niches`); the log's
`best` / `median` / `valid` are compiled by DEAP's `Statistics` into a `Logbook`.

One generation (`evolution` "generational", the default): the hall of fame (best
distinct programs, at most one per niche) is carried over unchanged; parents are drawn
by tournament among niche representatives and varied; a share of fresh random programs
joins; new programs are screened on the probe networks and scored on the search split
by the pool; fitness is the rank correlation with each target column, combined by mean
or min. With `evolution` "aging" (regularized evolution, Real et al. 2019) the
population is a queue: each generation breeds `offspring` children the same way, they
join the queue's end and as many of the oldest programs leave it (`emq.ga.aged`); no
elites are kept in the population, only in the hall of fame. Programs already evaluated
are looked up by canonical hash, not scored again. With `strategy` "random" (the control
of evolution) every generation after the first is `population` fresh random programs
instead, on the same screens, hall of fame, log and checkpoint. With `hurdle_size`,
a new program is scored on the whole split only when its fitness on the split's first
networks reaches the population's (`search.hurdles`). With `sketch`, the probe and the
search split are read through K-entry sketches of their large statistics (`emq.sketch`;
with `sketch_slices`, through K-entry slices for the programs a sketch cannot serve),
and the hall of fame is scored again on the full split before it is ranked and written.
The run ends after `generations`, or earlier after the generation in which the programs
evaluated reach `budget`.

`log.jsonl` has one line per generation: `gen`, `best` / `median` fitness of the
valid programs in the population scored on the whole split (not those stopped at a
hurdle), `best_ever` (the hall of fame's best) and its formula, `valid`, `niches`
(distinct niches among the valid programs),
`evaluations` (programs screened this generation), `cache_hits` (known programs
not scored again), `equivalent_hits` (programs screened whose probe fingerprint matched
a program scored earlier in the run, given its record instead of being scored on the
search split: `search.equivalence`), `rejections` (this generation's screenings by reason),
`hurdle` (with hurdles only: `stopped`, `passed`, this generation's programs scored on the
hurdle's subset that stopped there or went on to the whole split),
`shared_subexpressions` (distinct op subexpressions found in two or more
programs of the population), `top_subexpression` (the one in most programs:
`formula`, `programs`; null when none is shared; `search.subexpressions`),
`seconds` (the generation's wall time, its checkpoint included), `time` (those
seconds by phase: `variation`, `screening` (static and probe screens, in the pool's
workers or, for an in-process pool, in this process (`search.screener`), while the pool
already scores the survivors of earlier batches),
`evaluation` (waiting for the pool's scores on the search split, and fitness),
`selection` (niches, hall of fame), `checkpoint`) and
`programs_per_s` (evaluations / seconds). Timings are the only values that differ
between runs of the same seed.

After each generation the state is checkpointed (`search.checkpoint`), so
`resume=True` continues with exactly the results an uninterrupted run would have
produced; at the end the hall of fame is written (`search.hall_of_fame`).
"""
from __future__ import annotations

import copy
import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from deap import base, tools
from tqdm.auto import tqdm

from emq.errors import StatUnavailableError
from emq.fitness import TrivialChoice, beyond_trivial, choose_best_trivial, get_metric, joint, partial_correlation
from emq.ga import aged, drawing_from
from emq.proxy import Proxy
from emq.separable import is_separable, why_not_separable
from emq.stats import STATS, NetworkStats
from search import run_lock
from search.checkpoint import SearchState, load_checkpoint, save_checkpoint, state_path, write_log
from search.config import ResumeError, SearchConfig, SeedProxyError
from search.equivalence import Twins
from search.generate import Grammar, GrowConfig, random_program, separable_op_weights
from search.hall_of_fame import hall_entry, rescored_hall
from search.hurdles import Hurdle, hurdle_size, is_stopped, judge
from search.individual import Program
from search.interrupt import stop_requested
from search.niches import NicheHallOfFame, count_niches, representatives, tournament
from search.operators import Limits, crossover, mutate, program
from search.pool import EvaluationPool, ShardedStats
from search.report import plot_evolution, plot_hall_of_fame
from search.rng import SearchRNG
from search.run_inputs import PhaseClock, checked_predictors, checked_truth
from search.run_folder import RunFolder
from search.screener import SCREEN_IN, Screener, screener_for
from search.screening import UNDEFINED_FITNESS, Outcome, ScreenLimits, score_outcome
from search.stats_source import StatsSource
from search.subexpressions import common_subexpressions


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
    sources: tuple[StatsSource | None, StatsSource | None] = (None, None),
    stop_after: int | None = None,
    on_generation: Callable[[int, dict[str, Any]], None] | None = None,
    command: str | None = None,
    trivial: Mapping[str, np.ndarray] | None = None,
    features: Mapping[str, np.ndarray] | None = None,
    screen_in: str = "workers",
) -> SearchResult:
    """Evolve proxy programs on `search_stats` against `truth` and return the hall of fame.

    `probe_stats_other_batch[i]` holds network `probe_index[i]` of `search_stats`
    (default: the first ones) on a second batch; it serves the input-independence
    screen (None skips that screen). `truth` maps column -> array aligned with
    `search_stats`. `pool` evaluates programs (None: serially in this process);
    `sources` (files of the search statistics, and of the probe's second batch) lets
    process pools read the statistics from existing files instead of a spilled copy.
    Held-out judgement is `search.protocol`'s, after the search.
    `stop_after` ends this call after that generation (the run stays resumable);
    `on_generation(gen, log_row)` is called
    after each generation's checkpoint. `trivial` maps each trivial predictor to its
    values on the search networks (#params is added from the statistics), `features`
    each architecture hyperparameter; both feed the trivial-equivalent screen, and the
    best trivial predictor per target is the control of the partial fitness.
    `screen_in` "workers" screens new programs in the pool's workers where it has
    processes (`search.screener`), "search" in this process (as before issue 23's
    change; `benchmarks/screen_in_workers.py` compares the two); the results are the same.
    """
    run_dir = Path(run_dir)
    n = len(search_stats)
    truth, targets = checked_truth(truth, config, n)
    if screen_in not in SCREEN_IN:
        raise ValueError(f"screen_in must be one of {', '.join(SCREEN_IN)}, got {screen_in!r}")
    if probe_index is None:
        k = len(probe_stats_other_batch) if probe_stats_other_batch is not None else min(config.probe_size, n)
        probe_index = list(range(k))
    stats_names = list(config.stats or sorted(set.intersection(*(s.available() for s in search_stats))))
    op_weights = dict(config.op_weights)
    if config.separable:  # sum_layers(f(lb_*)) only: every program separable by construction (emq.separable)
        stats_names = [n for n in stats_names if STATS[n].per_layer_bits]
        op_weights.update(separable_op_weights())
    grammar = Grammar(stats_names, GrowConfig(config.max_depth, config.max_size, op_weights=op_weights))
    run_lock.acquire(run_dir)  # before any write: a second search on this folder fails here, at once
    own_pool = pool is None
    pool = pool or EvaluationPool("serial")
    search_set = hurdle = None
    try:
        limits = ScreenLimits(config.max_size, config.time_budget_s, config.reject_input_independent,
                              config.trivial_tau_limit, config.arch_eta_limit)
        predictors = checked_predictors(trivial, features, search_stats)
        index = list(probe_index)
        # New programs are screened on the probe (in the pool's workers where it has processes); only the
        # survivors go to the pool's shards of the search set.
        prefix = sources[0] is not None and index == list(range(len(index)))
        screener = screener_for(
            pool, [search_stats[i] for i in index], probe_stats_other_batch, n, limits, config.sketch,
            config.sketch_slices,
            trivial={k: np.asarray(v, dtype=np.float64)[index] for k, v in predictors.items()},
            features={k: np.asarray(v, dtype=np.float64)[index] for k, v in (features or {}).items()},
            sources=(sources[0].part(0, len(index)) if prefix else None, sources[1]), where=screen_in)
        search_set = pool.attach(search_stats, sources[0], config.sketch, config.sketch_slices)
        choices = choose_best_trivial(predictors, {t: truth[t] for t in targets}, get_metric(config.metric))
        controls = {t: (c, c.oriented(predictors[c.name])) for t, c in choices.items()}
        h = hurdle_size(config.hurdle_size, n)
        if h:
            hurdle_set = pool.attach(search_stats[:h], sources[0].part(0, h) if sources[0] is not None else None,
                                     config.sketch, config.sketch_slices)
            hurdle = Hurdle.cut(h, config.hurdle_quantile, hurdle_set, {t: truth[t] for t in targets}, controls)
        engine = _Engine(config, grammar, {t: truth[t] for t in targets}, pool, search_set, screener, run_dir,
                         controls, hurdle)
        try:
            state = engine.start(resume)
        except GenerationStopped:  # SIGTERM during the first generation: nothing was checkpointed yet
            return SearchResult(run_dir, [], [], -1, False, choices)
        _generations(engine, state, config, progress, stop_after, on_generation)
        finished = engine.done(state)
        hall = engine.finish(state, command)
        return SearchResult(run_dir, hall, state.log, state.generation, finished, choices)
    finally:
        if search_set is not None:
            pool.detach(search_set)
        if hurdle is not None:
            pool.detach(hurdle.data)
        if own_pool:
            pool.close()
        run_lock.release(run_dir)


def _generations(engine: "_Engine", state: SearchState, config: SearchConfig, progress: bool,
                 stop_after: int | None, on_generation: Callable[[int, dict[str, Any]], None] | None) -> None:
    """Run generations until the last one, `stop_after`, or a stop request (each one is checkpointed)."""
    bar = tqdm(total=config.generations, initial=min(state.generation + 1, config.generations),
               desc="search", unit="gen", disable=not progress, leave=False)
    try:
        while not engine.done(state):
            if stop_after is not None and state.generation >= stop_after:
                break
            if stop_requested():  # SIGTERM in a batch job: the last generation is checkpointed
                break
            try:
                row = engine.step(state)
            except GenerationStopped:  # SIGTERM mid-generation: the last checkpoint is the resume point
                break
            bar.update(1)
            bar.set_postfix(best=_short(row["best_ever"]), median=_short(row["median"]), niches=row["niches"],
                            rejected=sum(row["rejections"].values()))
            if on_generation is not None:
                on_generation(state.generation, row)
    finally:
        bar.close()


def _on_whole_split(values: Sequence[tuple[float | None, bool]]) -> list[float]:
    return [fitness for fitness, stopped in values if fitness is not None and not stopped]


def _best(values: Sequence[tuple[float | None, bool]]) -> float | None:
    scored = _on_whole_split(values)
    return max(scored) if scored else None


def _median(values: Sequence[tuple[float | None, bool]]) -> float | None:
    scored = _on_whole_split(values)
    return float(np.median(scored)) if scored else None


def _valid(values: Sequence[tuple[float | None, bool]]) -> int:
    return sum(fitness is not None for fitness, _ in values)


#: A population's figures in log.jsonl: `best` / `median` fitness of the programs scored on the whole split (not
#: screened out, not stopped at a hurdle) and `valid` (not screened out), compiled by DEAP from (fitness, stopped).
STATISTICS = tools.Statistics(key=lambda ind: (ind.fitness, is_stopped(ind.record)))
STATISTICS.register("best", _best)
STATISTICS.register("median", _median)
STATISTICS.register("valid", _valid)

#: Programs screened together before their survivors are sent to the pool (the pool scores them while the next
#: batches are screened).
SCREEN_BATCH = 8


class GenerationStopped(Exception):
    """SIGTERM arrived while a generation was being evaluated: it is abandoned, the previous checkpoint stands.

    A generation of a large population can take long; stopping between screening batches
    bounds the wait after SIGTERM to the batches in flight (`SCREEN_BATCH` programs each,
    `Screener.ahead` of them) and the pool's work already sent, whatever the population size.
    """


def _short(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


class _Engine:
    """One search's fixed parts (config, grammar, truth, pool) and the generation step."""

    def __init__(self, config: SearchConfig, grammar: Grammar, truth: dict[str, np.ndarray], pool: EvaluationPool,
                 search_set: ShardedStats, screener: Screener, run_dir: Path,
                 controls: dict[str, tuple[TrivialChoice, np.ndarray]], hurdle: Hurdle | None = None) -> None:
        self.config = config
        self.hurdle = hurdle
        self.controls = controls  # per target: the best trivial predictor and its oriented values
        self.grammar = grammar
        self.truth = truth
        self.pool = pool
        self.search_set = search_set
        self.screener = screener
        self.run_dir = run_dir
        self.metric = get_metric(config.metric)
        self.limits = Limits(config.max_size, config.max_depth)

    # ------------------------------------------------------------ start
    def start(self, resume: bool) -> SearchState:
        """Return the state after generation 0, or the checkpointed one when resuming."""
        if state_path(self.run_dir).exists():
            if not resume:
                raise ResumeError(f"{self.run_dir} already holds a search; resume it (resume=True / --resume) "
                                  "or choose another folder")
            state, saved = load_checkpoint(self.run_dir, self.config)
            if self.config.extends(saved):
                self._write_config()
            self._attach(state)
            for row in state.log:
                self.logbook.record(**{k: row[k] for k in ('gen', *STATISTICS.fields)})
            return state
        seen: set[str] = set()
        population = self._seeded(seen)  # checked before the first write: a bad seed leaves no half-started run
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        rng = SearchRNG.from_seed(self.config.seed)
        state = SearchState(-1, [], NicheHallOfFame(self.config.hof_size, self.config.niche_threshold), OrderedDict(),
                            rng)
        self._attach(state)
        clock = PhaseClock()
        population += self._fresh(state, self.config.population - len(population), seen)
        clock.lap("variation")
        stats = self._evaluate(state, population, clock)
        self._advance(state, population, stats, clock)
        return state

    def done(self, state: SearchState) -> bool:
        """Whether the run is over: its last generation finished, or its budget of evaluated programs spent."""
        spent = sum(row["evaluations"] for row in state.log)
        return state.generation + 1 >= self.config.generations or (
            self.config.budget is not None and spent >= self.config.budget)

    def _attach(self, state: SearchState) -> None:
        """Register this run's operators on a DEAP toolbox, drawing from `state`'s streams; start the logbook.

        `select` is DEAP's `selTournament` among niche representatives, drawing from the
        run's DEAP stream (lent to the global `random` module for each call); `mate`,
        `mutate` and `generate` are the typed crossover, mutations and random programs,
        drawing from `state.rng.py`.
        """
        toolbox = base.Toolbox()
        toolbox.register("select", drawing_from(state.rng.deap, tournament), tournsize=self.config.tournament)
        toolbox.register("mate", crossover, rng=state.rng.py, limits=self.limits)
        toolbox.register("mutate", mutate, rng=state.rng.py, grammar=self.grammar, limits=self.limits)
        toolbox.register("generate", random_program, state.rng.py, self.grammar)
        self.toolbox = toolbox
        self.logbook = tools.Logbook()

    # ------------------------------------------------------------- step
    def step(self, state: SearchState) -> dict[str, Any]:
        """Breed, evaluate and select one generation (aging: one batch of children); checkpoint; return its log row."""
        if self.config.strategy == "random":
            return self._random_step(state)
        if self.config.evolution == "aging":
            return self._aging_step(state)
        clock = PhaseClock()
        cfg = self.config
        elites = [Program(m.proxy, m.record) for m in state.hof]
        seen = {e.hash for e in elites}
        valid = [ind for ind in state.population if ind.fitness is not None]
        reps = representatives(valid, cfg.niche_threshold)
        clock.lap("selection")
        n_fresh = int(round(cfg.fresh_share * cfg.population)) if reps else cfg.population - len(elites)
        n_off = max(0, cfg.population - len(elites) - n_fresh)
        offspring = self._breed(state, reps, n_off, seen)
        fresh = self._fresh(state, cfg.population - len(elites) - len(offspring), seen)
        population = elites + offspring + fresh
        clock.lap("variation")
        stats = self._evaluate(state, offspring + fresh, clock)
        return self._advance(state, population, stats, clock)

    def _aging_step(self, state: SearchState) -> dict[str, Any]:
        """Breed, evaluate and admit one batch of `offspring` children into the aging queue (evolution "aging").

        Regularized evolution (Real et al. 2019): the population is a queue, oldest
        first; each child is bred from tournament winners among the niche
        representatives of the population, joins the queue at its end, and the oldest
        program leaves it once the queue holds `population`. Nothing is kept for being
        good (no elites in the population: the hall of fame keeps the best), so a
        program's lineage survives only by breeding good children. Children are bred
        from the population as it was at the batch's start and evaluated together, so
        the pool scores a batch at a time; a batch is one log row and one checkpoint.
        """
        clock = PhaseClock()
        cfg = self.config
        queue = state.population
        seen = {ind.hash for ind in queue}  # a child already alive would be a duplicate in the queue
        reps = representatives([ind for ind in queue if ind.fitness is not None], cfg.niche_threshold)
        clock.lap("selection")
        batch = cfg.offspring_size()
        n_fresh = int(round(cfg.fresh_share * batch)) if reps else batch
        children = self._breed(state, reps, batch - n_fresh, seen)
        children += self._fresh(state, batch - len(children), seen)
        clock.lap("variation")
        stats = self._evaluate(state, children, clock)
        return self._advance(state, aged(queue, children, cfg.population), stats, clock)

    def _breed(self, state: SearchState, reps: Sequence[Program], n: int, seen: set[str]) -> list[Program]:
        """Return up to `n` new programs bred from tournament winners among `reps`, none of them in `seen` (updated).

        Each draw crosses two winners (`cx_prob`), mutates one (`mut_prob`) or copies one;
        a program screened out before is not bred again. At most 20 draws per program.
        """
        cfg, toolbox = self.config, self.toolbox
        offspring: list[Program] = []
        attempts = 0
        while reps and len(offspring) < n and attempts < 20 * max(1, n):
            attempts += 1
            r = state.rng.py.random()
            if r < cfg.cx_prob:
                a, b = toolbox.select(reps, 2)
                kids = list(toolbox.mate(a.proxy, b.proxy))
            elif r < cfg.cx_prob + cfg.mut_prob:
                (a,) = toolbox.select(reps, 1)
                kids = [toolbox.mutate(a.proxy)[0]]
            else:
                (a,) = toolbox.select(reps, 1)
                kids = [a.proxy]
            for kid in kids:
                ind = Program(kid)
                known = state.memo.get(ind.hash)
                if known is not None and known["fitness"] is None:
                    continue  # already screened out: do not spend a population slot on it again
                if len(offspring) < n and ind.hash not in seen:
                    seen.add(ind.hash)
                    offspring.append(ind)
        return offspring

    def _random_step(self, state: SearchState) -> dict[str, Any]:
        """Sample, evaluate and select one generation of `population` fresh random programs (strategy "random").

        No selection, crossover or mutation and no elites in the population: the control
        that says what evolution adds on the same budget, with the same generator, screens,
        fitness, hall of fame (kept across generations), log and checkpoint.
        """
        clock = PhaseClock()
        population = self._fresh(state, self.config.population, set())
        clock.lap("variation")
        stats = self._evaluate(state, population, clock)
        return self._advance(state, population, stats, clock)

    def _seeded(self, seen: set[str]) -> list[Program]:
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
            if self.config.separable and not is_separable(tree):
                raise SeedProxyError(f"seed proxy {formula!r} is not separable ({why_not_separable(tree)}); a "
                                     "--separable search takes sum_layers(f(lb_*)) programs only")
            ind = Program(tree)
            if ind.hash not in seen:
                seen.add(ind.hash)
                out.append(ind)
        return out

    def _fresh(self, state: SearchState, k: int, seen: set[str]) -> list[Program]:
        out = []
        for _ in range(k):
            ind = None
            for _ in range(20):  # prefer programs never evaluated before
                ind = Program(program(self.toolbox.generate()))
                if ind.hash not in seen and ind.hash not in state.memo:
                    break
            if ind.hash in seen:
                continue
            seen.add(ind.hash)
            out.append(ind)
        return out

    # ------------------------------------------------------- evaluation
    def _evaluate(self, state: SearchState, individuals: Sequence[Program], clock: "PhaseClock") -> dict[str, Any]:
        todo: dict[str, Program] = {}
        for ind in individuals:
            if ind.hash not in state.memo and ind.hash not in todo:
                todo[ind.hash] = ind
        # Screened in batches, a few ahead (`search.screener`); each batch's survivors go to the pool at once,
        # so the workers score them while the next batches are screened (cores do not wait for one another).
        outcomes: list[Outcome] = []
        jobs = []
        items = list(todo.values())
        twins = Twins(state.fingerprints, state.memo, self.config.equivalence_cache)
        first = self.hurdle.data if self.hurdle is not None else self.search_set  # where survivors are scored first
        waiting = iter([items[i: i + SCREEN_BATCH] for i in range(0, len(items), SCREEN_BATCH)])
        screening: deque = deque()
        while True:
            while len(screening) < self.screener.ahead and (group := next(waiting, None)) is not None:
                screening.append((group, self.screener.submit([ind.proxy for ind in group])))
            if not screening:
                break
            if stop_requested():
                for _, sent in screening:
                    sent.settle()
                for _, job in jobs:
                    job.result()  # let the workers finish what they were sent before the pool closes
                raise GenerationStopped
            group, sent = screening.popleft()
            batch = sent.result()
            outcomes += batch
            passed = [(ind, out) for ind, out in zip(group, batch)
                      if out.reason is None and not twins.found(ind.hash, out)]
            if passed:
                jobs.append((passed, self.pool.submit(first, [ind.proxy for ind, _ in passed])))
        clock.lap("screening")
        subset: dict[str, dict[str, Any]] = {}  # hash -> record on the hurdle's subset
        if self.hurdle is not None:
            jobs, subset = self._hurdle(state, jobs)
        for passed, job in jobs:
            for (_, out), (scores, failures) in zip(passed, job.result()):
                score_outcome(out, scores, failures)
        rejections: Counter = Counter()
        seconds = 0.0
        for ind, outcome in zip(todo.values(), outcomes):
            twin = twins.of.get(ind.hash)  # scored earlier (this generation: earlier in `todo`), so in the memo
            if twin is not None:
                record = copy.deepcopy(state.memo[twin])
            elif is_stopped(subset.get(ind.hash)):
                record = subset[ind.hash]
            else:
                record = self._record(outcome)
                if self.hurdle is not None:
                    record["hurdle"] = (subset.get(ind.hash) or {}).get("fitness")
            state.memo[ind.hash] = record
            seconds += outcome.seconds
            if record["reason"] is not None:
                rejections[record["reason"]] += 1
        for ind in individuals:
            state.memo.move_to_end(ind.hash)
            ind.set_record(state.memo[ind.hash])
        while len(state.memo) > self.config.memo_size:
            state.memo.popitem(last=False)
        twins.remember(self.config.memo_size)
        clock.lap("evaluation")
        out = {"evaluations": len(todo), "cache_hits": len(individuals) - len(todo), "equivalent_hits": len(twins.of),
               "rejections": dict(sorted(rejections.items())), "eval_seconds": seconds}
        if self.hurdle is not None:
            stopped = sum(is_stopped(r) for r in subset.values())
            out["hurdle"] = {"stopped": stopped, "passed": len(subset) - stopped}
        return out

    def _hurdle(self, state: SearchState, jobs: list[tuple[list[tuple[Program, Outcome]], Any]]
                ) -> tuple[list[tuple[list[tuple[Program, Outcome]], Any]], dict[str, dict[str, Any]]]:
        """Judge the programs scored on the hurdle's subset; return the jobs scoring the passers on the whole split,
        and every program's subset record (stopped ones already in their final form: `search.hurdles`)."""
        hurdle = self.hurdle
        results = [(ind, out, *res) for passed, job in jobs for (ind, out), res in zip(passed, job.result())]
        subset = judge(hurdle, [(ind.hash, out, scores, fails) for ind, out, scores, fails in results],
                       [ind.record for ind in state.population if ind.fitness is not None],
                       lambda out: self._record(out, hurdle.truth, hurdle.controls))
        passers = [(ind, out) for ind, out, _, _ in results if not is_stopped(subset[ind.hash])]
        batches = [passers[i: i + SCREEN_BATCH] for i in range(0, len(passers), SCREEN_BATCH)]
        return [(b, self.pool.submit(self.search_set, [ind.proxy for ind, _ in b])) for b in batches], subset

    def _record(self, outcome: Outcome, truth: Mapping[str, np.ndarray] | None = None,
                controls: Mapping[str, tuple[TrivialChoice, np.ndarray]] | None = None) -> dict[str, Any]:
        """Return the evaluation record of a scored outcome: fitness against `truth` (default: the search split's)."""
        truth = self.truth if truth is None else truth
        controls = self.controls if controls is None else controls
        if outcome.reason is not None:
            return {"reason": outcome.reason, "fitness": None, "targets": {}, "probe": None}
        plain = {t: self.metric(outcome.scores, col) for t, col in truth.items()}
        per = dict(plain)
        if self.config.fitness != "plain":
            beyond = beyond_trivial if self.config.fitness == "partial" else partial_correlation
            per = {t: beyond(self.metric, outcome.scores, col, controls[t][1])
                   if t in controls else plain[t] for t, col in truth.items()}
        value = joint(list(per.values()), self.config.joint)
        if not math.isfinite(value):
            return {"reason": UNDEFINED_FITNESS, "fitness": None, "targets": {}, "probe": None}
        return {"reason": None, "fitness": value, "targets": per, "plain": plain,
                "probe": [float(x) for x in outcome.probe], "flags": list(outcome.detail.get("flags", []))}

    # ------------------------------------------------- bookkeeping
    def _advance(self, state: SearchState, population: list[Program], stats: dict[str, Any],
                 clock: "PhaseClock") -> dict[str, Any]:
        state.generation += 1
        state.population = population
        valid = [ind for ind in population if ind.fitness is not None]
        scored = [ind for ind in valid if not is_stopped(ind.record)]  # on the whole split (hurdles stop the rest)
        state.hof.update(scored)
        self.logbook.record(gen=state.generation, **STATISTICS.compile(population))
        figures = self.logbook[-1]
        row = {
            "gen": state.generation,
            "best": figures["best"],
            "median": figures["median"],
            "best_ever": state.hof[0].fitness if len(state.hof) else None,
            "best_formula": state.hof[0].proxy.formula() if len(state.hof) else None,
            "population": len(population),
            "valid": figures["valid"],
            "niches": count_niches(valid, self.config.niche_threshold),
            "evaluations": stats["evaluations"],
            "cache_hits": stats["cache_hits"],
            "equivalent_hits": stats["equivalent_hits"],
            "rejections": stats["rejections"],
            **({"hurdle": stats["hurdle"]} if "hurdle" in stats else {}),
            **common_subexpressions(ind.proxy for ind in population),
        }
        clock.lap("selection")
        state.log.append(row)
        clock.fill(row)  # provisional in the checkpoint (no checkpoint time yet); final in log.jsonl
        save_checkpoint(self.run_dir, state, self.config)
        clock.lap("checkpoint")
        clock.fill(row)
        write_log(self.run_dir, state.log)
        return row

    def _write_config(self) -> None:
        RunFolder(self.run_dir).write_config(self.config, self.grammar.stats, list(self.truth),
                                             {t: c for t, (c, _) in self.controls.items()})

    # ------------------------------------------------------------ finish
    def finish(self, state: SearchState, command: str | None) -> list[dict[str, Any]]:
        """Write hall_of_fame.json (search split only; `search.benchmark_run` judges it held out),
        hall_of_fame.png and evolution.png; return the hall."""
        hall = [hall_entry(rank, ind) for rank, ind in enumerate(state.hof, start=1)]
        if self.config.sketch and hall:  # ranked and exported on the full statistics, never on a sketch (emq.sketch)
            full = self.pool.score(self.search_set.with_sketch(0), [ind.proxy for ind in state.hof])
            hall = rescored_hall(hall, [self._record(score_outcome(
                Outcome(ind.proxy.formula(), ind.hash, probe=np.asarray(ind.record["probe"]),
                        detail={"flags": ind.record.get("flags", [])}), scores, failures))
                for ind, (scores, failures) in zip(state.hof, full)])
        RunFolder(self.run_dir).write_hall(hall, self.config, command)
        plot_hall_of_fame(hall, self.run_dir / "hall_of_fame.png")
        plot_evolution(state.log, self.run_dir / "evolution.png", self.config.metric)
        return hall
