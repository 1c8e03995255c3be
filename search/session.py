"""One search as a person or a batch job asks for it: `SearchRequest` -> `plan_search` -> `execute_search`.

`emq search` and `emq run JOB.toml` both fill a `SearchRequest` and run it here, so
the two cannot drift apart. `plan_search` does everything that can fail fast (the
benchmark, its target columns, the seed proxies, the settings, the worker count);
`execute_search` runs the plan:

- a single run, or a study (one run per search seed x batch seed, then the verdict
  over all of them: `search.study`) when more than one run is asked for or the
  request says `study=True` (jobs always write a study folder);
- in the run folder `out` (default `runs/NAME-seedS`, or `runs/NAME-study`), locked
  before the statistics are computed, so a second search on it fails at once;
- with the evaluation pool of the request (backend, workers, scheduler, device,
  resident shard size); a worker that dies is reported as one line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from emq.bench.base import Benchmark
from emq.errors import EMQUserError
from emq.stats.config import StatsConfig
from search.config import SearchConfig
from search.settings import SETTINGS, check_settings, default
from search.settings import SettingError as SearchSettingsError

#: Resident memory of a worker after importing torch and the project (about 230 MB measured with the CPU wheel,
#: rounded up for its working buffers).
WORKER_BASE_MB = 300


class PoolWorkerDiedError(EMQUserError, RuntimeError):
    """A pool worker died during the search (killed, often out of memory); the run resumes from its checkpoint."""


@dataclass(frozen=True)
class SearchRequest:
    """Everything one search asks for. `batch_seeds` None: the statistics' own batch seed; `study` None: a study
    when `seeds` x `batch_seeds` is more than one run; `pool_device` None: the statistics' device."""

    benchmark: str
    out: Path | None = None
    data_dir: Path | None = None
    batch_source: str | None = None
    stats: StatsConfig = field(default_factory=StatsConfig)
    seeds: tuple[int, ...] = default("seeds")
    batch_seeds: tuple[int, ...] | None = default("batch_seeds")
    population: int = default("population")
    generations: int = default("generations")
    targets: tuple[str, ...] | None = default("targets")
    joint: str = default("joint")
    metric: str = default("metric")
    fitness: str = default("fitness")
    strategy: str = default("strategy")
    evolution: str = default("evolution")
    offspring: int | None = default("offspring")
    budget: int | None = default("budget")
    hurdle_size: int = default("hurdle_size")
    hurdle_quantile: float = default("hurdle_quantile")
    sketch: int = default("sketch")
    sketch_slices: bool = default("sketch_slices")
    separable: bool = default("separable")
    reject_input_independent: bool = default("reject_input_independent")
    hof_size: int = default("hof_size")
    seed_proxies: tuple[Path, ...] = default("seed_proxies")
    max_search: int | None = default("max_search")
    max_heldout: int | None = default("max_heldout")
    baselines: tuple[str, ...] | None = None
    backend: str = default("backend")
    scheduler: str | None = default("scheduler")
    workers: int | None = default("workers")
    force_workers: bool = False
    pool_device: str | None = default("pool_device")
    shard_memory_mb: float | None = default("shard_memory_mb")
    screen_in: str = default("screen_in")
    study: bool | None = None
    #: True (`--resume`): the run folder must hold a run or study to continue; "auto" (jobs): continue what is
    #: there, else start; False: start, refusing a folder that already holds a run.
    resume: bool | str = False
    progress: bool = True
    command: str = ""
    #: Other files the request reads (a job file): no output of the search may replace them.
    read_files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SearchPlan:
    """A checked request: the open benchmark, the configs of the first run, the seeds and the run folder."""

    request: SearchRequest
    bench: Benchmark
    search_config: SearchConfig
    stats_config: StatsConfig
    seeds: tuple[int, ...]
    batch_seeds: tuple[int, ...]
    run_dir: Path
    study: bool
    workers: int | None


@dataclass
class SearchOutcome:
    """What a search did: its folder, how many runs finished, the verdict, and the folder's summary text."""

    run_dir: Path
    study: bool
    planned_runs: int
    finished_runs: int
    verdict: str | None
    best_formula: str | None
    seconds: float
    report: str = ""

    @property
    def finished(self) -> bool:
        return self.finished_runs == self.planned_runs

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(run_dir=str(self.run_dir), seconds=round(self.seconds, 3), finished=self.finished)
        data.pop("report")
        return data

    def to_text(self) -> str:
        if self.study:
            return f"{self.report}\ndone in {self.seconds:.0f} s; study folder {self.run_dir}: {self.verdict}"
        return (f"{self.report}\nbest proxy: {self.best_formula}\ndone in {self.seconds:.0f} s; run folder "
                f"{self.run_dir} (export: emq export {self.run_dir} --top 1 -o proxy.json)")


def plan_search(request: SearchRequest, notify: Callable[[str], None] | None = None) -> SearchPlan:
    """Return the checked plan of `request`; fail (one line) before any statistics are computed.

    Opens the benchmark (building an embedded one first, once: `notify` hears of it).
    """
    from emq.bench.registry import open_benchmark
    from emq.known import is_known_spec, resolve_known
    from emq.proxy import Proxy
    from emq.scoring import benchmark_available_stats

    check_request(request)
    seed_files = [p for p in request.seed_proxies if not is_known_spec(p)]
    seed_texts = {str(p): Proxy.load(p).formula() for p in seed_files}
    for spec in request.seed_proxies:  # the library's names are checked before the benchmark opens
        if is_known_spec(spec):
            resolve_known(str(spec))
    bench = open_benchmark(request.benchmark, request.data_dir, notify=notify, batch_source=request.batch_source)
    # `known` seeds every library proxy whose statistics the search computes (its --stats, or the default set).
    available = benchmark_available_stats(bench, request.stats)
    seed_formulas = tuple(formula for spec in request.seed_proxies for formula in (
        [p.formula() for p in resolve_known(str(spec), available).values()] if is_known_spec(spec)
        else [seed_texts[str(spec)]]))
    targets = bench.check_targets(request.targets)
    seeds = tuple(request.seeds)
    batch_seeds = tuple(request.batch_seeds or (request.stats.batch_seed,))
    study = request.study if request.study is not None else len(seeds) * len(batch_seeds) > 1
    name = request.benchmark
    run_dir = Path(request.out or Path("runs") / (f"{name}-study" if study else f"{name}-seed{seeds[0]}"))
    if request.resume is True:
        check_resumable(run_dir, study)
    check_run_outputs(run_dir, [(s, b) for s in seeds for b in batch_seeds] if study else [],
                      (*seed_files, *request.read_files))
    try:
        search_config = SearchConfig(
            population=request.population, generations=request.generations, seed=seeds[0], metric=request.metric,
            joint=request.joint, targets=tuple(targets) if targets else None,
            hof_size=min(request.hof_size, request.population - 1), seed_formulas=seed_formulas,
            fitness=request.fitness, reject_input_independent=request.reject_input_independent,
            strategy=request.strategy, budget=request.budget, hurdle_size=request.hurdle_size,
            hurdle_quantile=request.hurdle_quantile, evolution=request.evolution, offspring=request.offspring,
            sketch=request.sketch, sketch_slices=request.sketch_slices, separable=request.separable)
        stats_config = dataclasses.replace(request.stats, batch_seed=batch_seeds[0])
        if request.separable:
            stats_config = separable_stats(bench, stats_config)
    except (ValueError, TypeError, KeyError) as err:  # KeyError: an unknown metric name
        raise SearchSettingsError(str(err.args[0]) if err.args else type(err).__name__) from None
    workers = check_workers(request.backend, request.workers, request.force_workers, notify)
    return SearchPlan(request, bench, search_config, stats_config, seeds, batch_seeds, run_dir, study, workers)


def separable_stats(bench: Benchmark, config: StatsConfig) -> StatsConfig:
    """Return the statistics of a `--separable` search: the per-(layer, bits) ones (its --stats among them, else all).

    Fails (SettingError) on a benchmark without bit configurations or a --stats naming none of them.
    """
    from emq.stats import LAYER_BITS_STATS

    if bench.family != "mq":
        raise SearchSettingsError(f"--separable needs a mixed-precision benchmark (per-layer bits); {bench.name} "
                                  f"is a {bench.family} benchmark")
    names = LAYER_BITS_STATS if config.stat_names is None else tuple(
        n for n in config.stat_names if n in LAYER_BITS_STATS)
    if not names:
        raise SearchSettingsError(f"--separable reads the per-(layer, bits) statistics only; --stats names none of "
                                  f"them ({', '.join(LAYER_BITS_STATS)})")
    return dataclasses.replace(config, stat_names=names)


def check_request(request: SearchRequest) -> None:
    """Fail (SettingError, one line naming the option) when a setting of `request` is outside its documented bounds.

    The CLI and job files check the same bounds (`search.settings`) as they parse; this is
    the library's own check, for requests built in Python.
    """
    values = {name: getattr(request, name) for name in SETTINGS if hasattr(request, name)}
    values.update({name: getattr(request.stats, name) for name in SETTINGS if hasattr(request.stats, name)})
    values.pop("seed_proxies", None)  # paths, checked when read
    check_settings(values, lambda s: s.cli or s.name)


def check_resumable(run_dir: Path, study: bool) -> None:
    """Fail (ResumeError) when `--resume` names a folder with nothing to continue: a typo would start a new run."""
    from search.checkpoint import state_path
    from search.config import ResumeError

    found = state_path(run_dir).exists() or (study and ((run_dir / "study.json").exists()
                                                        or any(state_path(p).exists() for p in run_dir.glob("seed*-batch*"))))
    if not found:
        what = "does not exist" if not run_dir.exists() else f"holds no {'study' if study else 'run'} checkpoint"
        raise ResumeError(f"--resume: {run_dir} {what}; give the folder of the run to continue, or drop --resume "
                          "to start a new run there")


def check_run_outputs(run_dir: Path, study_runs: list[tuple[int, int]], inputs: tuple[Path, ...]) -> None:
    """Fail before any work if the run folder is a link or a file, or a file it would write is one of `inputs`."""
    from emq.atomic import check_output_folder, check_writes
    from search.run_folder import RUN_FILES
    from search.study import run_folder

    check_output_folder(run_dir)
    folders = [run_dir, *(run_folder(run_dir, s, b) for s, b in study_runs)]
    check_writes([folder / name for folder in folders for name in RUN_FILES], inputs)


def execute_search(plan: SearchPlan) -> SearchOutcome:
    """Run `plan` (one run or a study) in its locked run folder and return what it did."""
    from search.benchmark_run import search_benchmark
    from search.run_folder import RunFolder
    from search.pool import EvaluationPool
    from search.run_lock import run_folder_lock
    from search.study import run_study

    r = plan.request
    options = dict(baselines=list(r.baselines) if r.baselines else None, max_search=r.max_search or None,
                   max_heldout=r.max_heldout, progress=r.progress, resume=bool(r.resume), screen_in=r.screen_in)
    start = time.perf_counter()
    with run_folder_lock(plan.run_dir), worker_crashes(r.backend):
        with EvaluationPool(r.backend, n_jobs=plan.workers, scheduler=r.scheduler,
                            device=r.pool_device or plan.stats_config.device,
                            max_shard_bytes=int(r.shard_memory_mb * 2**20) if r.shard_memory_mb else None) as pool:
            if plan.study:
                study = run_study(plan.bench, plan.stats_config, plan.search_config, plan.run_dir, plan.seeds,
                                  plan.batch_seeds, search_benchmark, r.command, pool=pool, **options)
            else:
                result = search_benchmark(plan.bench, plan.stats_config, plan.search_config, plan.run_dir, pool=pool,
                                          command=r.command, **options)
    seconds = time.perf_counter() - start
    if plan.study:
        return SearchOutcome(plan.run_dir, True, len(plan.seeds) * len(plan.batch_seeds), len(study["runs"]),
                             study["verdict"], None, seconds, _read(plan.run_dir / "study.md"))
    best = result.hall_of_fame[0]["formula"] if result.hall_of_fame else None
    folder = RunFolder(plan.run_dir)
    verdict = folder.verdict() if result.finished else None
    return SearchOutcome(plan.run_dir, False, 1, int(result.finished), verdict, best, seconds, folder.summary_text())


def run_search_request(request: SearchRequest, notify: Callable[[str], None] | None = None) -> SearchOutcome:
    """Plan and run `request`: one search or a study (see the module docstring)."""
    return execute_search(plan_search(request, notify))


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def check_workers(backend: str, workers: int | None, force: bool = False,
                  notify: Callable[[str], None] | None = None) -> int | None:
    """Return `workers` after checking it against the usable cores; tell `notify` what local workers will cost.

    Each local worker process imports torch and holds its shard of the search
    statistics, so more workers than cores only add torch's memory and contention.
    """
    from search.pool import usable_cores

    if backend not in ("loky", "threading"):
        return workers
    cores = usable_cores()
    if workers is not None and workers > cores and not force:
        raise SearchSettingsError(f"--workers {workers}: {workers} workers for {cores} usable core(s): more workers "
                                  f"than cores only add memory; use at most {cores}, or add --force-workers")
    n = workers or cores
    if backend == "loky" and notify is not None:
        notify(f"pool: {n} worker process(es); each needs about {WORKER_BASE_MB} MB for torch plus its shard "
               f"(1/{n}) of the search statistics (ViT statistics: tens to hundreds of MB per network; see "
               "--max-search and --shard-memory)")
    return workers


@contextlib.contextmanager
def worker_crashes(backend: str) -> Iterator[None]:
    """Report a pool worker that died (killed, out of memory) as one line instead of exiting silently."""
    try:
        yield
    except Exception as err:
        name = type(err).__name__
        if name in ("TerminatedWorkerError", "BrokenProcessPool") or (name == "KilledWorker" and backend == "dask"):
            raise PoolWorkerDiedError(
                f"a {backend} pool worker died during the search ({name}: often out of memory); rerun with fewer "
                "--workers or --backend serial, adding --resume to continue the run") from None
        raise
