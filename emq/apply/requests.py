"""What `emq apply mq` and `emq apply vit` ask for, and the one call each makes.

- `apply_bits`: each proxy's bit allocation under each size budget of an MQ
  benchmark (`Allocations`); with `compare`, the comparison with the other
  allocators by real PTQ accuracy (`emq.apply.mq.compare_mq`), on a benchmark that
  can measure it (`Benchmark.measures_ptq_accuracy`);
- `apply_arch`: each proxy's best arch of a space under each parameter budget
  (`ArchSearches`); with `train`, the comparison with the benchmark's archs by
  training (`emq.apply.vit.compare_vit_digits`), for a space whose benchmark can
  train its archs (`ArchSpace.trained_by`).

Every result gives `to_json()` (plain data) and `to_text()` (a short summary for a
person); the comparisons also give `to_markdown(command)`, the report to keep.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from tqdm.auto import tqdm

from emq.apply.arch import ARCH_SPACES, ArchObjective, ArchSearchResult, get_space, search_arch
from emq.apply.allocation import BitAllocation, allocate
from emq.apply.budget import Budget
from emq.apply.mq import COMPARE_ALLOCATORS, COMPARE_BASELINES, MQComparison, benchmark_objective, compare_mq, precheck
from emq.apply.vit import ViTComparison, compare_vit_digits
from emq.baselines import get_baseline
from emq.bench.base import Benchmark
from emq.errors import EMQUserError
from emq.proxy import Proxy
from emq.stats.config import StatsConfig

#: The allocator name that asks for no allocator besides the objectives (`--allocator none`).
NO_ALLOCATOR = "none"


class ApplyRequestError(EMQUserError, ValueError):
    """A request the benchmark or space cannot serve; the message says what it lacks."""


@dataclass(frozen=True)
class BitRequest:
    """Bit allocation under each of `budgets` (in `budget_unit`); `compare` also runs the other allocators.

    `baselines` None: `COMPARE_BASELINES`; `allocators` None: `COMPARE_ALLOCATORS`,
    and `("none",)` or `()`: none of them (only with `compare`).
    """

    budgets: tuple[float, ...]
    budget_unit: str = "mb"
    method: str = "auto"
    exact_stats: bool = False
    seed: int = 0
    population: int = 30
    generations: int = 20
    compare: bool = False
    random_configs: int = 10
    baselines: tuple[str, ...] | None = None
    allocators: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.sizes()  # a budget that is not a positive number fails here, before any work

    def sizes(self) -> tuple[Budget, ...]:
        return tuple(Budget(value, self.budget_unit) for value in self.budgets)


@dataclass
class Allocations:
    """Each proxy's allocation under each budget, proxy by proxy."""

    rows: list[tuple[str, BitAllocation]] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": name, **alloc.to_json()} for name, alloc in self.rows]

    def to_text(self) -> str:
        lines = []
        for name, a in self.rows:
            lines += [f"{name} ({a.proxy}), budget {a.budget}:",
                      f"  {a.method}{' (optimal)' if a.optimal else ''}: {a.average_bits:.3f} average bits, "
                      f"{a.size_mb:.6f} MB (cap {a.cap_bits} bit-weights), proxy score {a.score:.6g}, "
                      f"{a.evaluations} proxy evaluations, {a.seconds:.2f} s"]
            lines += [f"  note: {note}" for note in a.notes]
            lines.append("  bits: " + " ".join(f"{k}={v}" for k, v in a.bits.items()))
        return "\n".join(lines)


def apply_bits(bench: Benchmark, proxies: dict[str, Proxy], request: BitRequest, stats: StatsConfig, *,
               progress: bool = True, notify: Callable[[str], None] | None = None) -> Allocations | MQComparison:
    """Return each proxy's allocation under each budget, or with `request.compare` the comparison report.

    Everything that can fail (budgets, statistics, method, eligibility) is checked before
    any statistics are computed. `notify` receives the comparison's progress lines.
    """
    if bench.family != "mq":
        raise ApplyRequestError(f"{bench.name} is a {bench.family} benchmark; bit allocation needs an MQ benchmark "
                                "(for ViTs: emq apply vit)")
    budgets = request.sizes()
    precheck(bench, proxies, budgets, request.method, request.exact_stats)
    kwargs = dict(batch_seed=stats.batch_seed, batch_size=stats.batch_size, hessian_samples=stats.hessian_samples,
                  device=stats.resolved_device(), store_dtype=stats.torch_dtype())
    solver = dict(method=request.method, seed=request.seed, population=request.population,
                  generations=request.generations)
    if request.compare:
        return compare_mq(bench, proxies, budgets, random_configs=request.random_configs,
                          baselines=request.baselines if request.baselines is not None else COMPARE_BASELINES,
                          allocators=_comparable(bench, request), progress=notify, **solver, **kwargs)
    result = Allocations()
    for name, proxy in proxies.items():
        with tqdm(desc=f"statistics {name}", unit="pass", leave=False, disable=not progress) as bar:
            def passes(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            objective = benchmark_objective(bench, proxy, exact=request.exact_stats, progress=passes, **kwargs)
        result.rows += [(name, allocate(objective, budget, **solver)) for budget in budgets]
    return result


def _comparable(bench: Benchmark, request: BitRequest) -> list[str]:
    """Return the allocators `compare_mq` runs, after checking the benchmark and request allow the comparison."""
    if request.exact_stats:
        raise ApplyRequestError("--compare uses the separable statistics model; drop --exact-stats")
    if not bench.measures_ptq_accuracy:
        raise ApplyRequestError(f"--compare measures real PTQ accuracy, which needs a benchmark whose network, "
                                f"calibration and test images ship here; {bench.name} has none")
    not_programs = [b for b in request.baselines or () if get_baseline(b).kind != "program"]
    if not_programs:
        raise ApplyRequestError(f"--baseline {', '.join(not_programs)}: only program baselines (formulas over "
                                "statistics) can be allocation objectives")
    if request.allocators is None:
        return list(COMPARE_ALLOCATORS)
    if NO_ALLOCATOR in request.allocators and len(set(request.allocators)) > 1:
        raise ApplyRequestError(f"--allocator {NO_ALLOCATOR} excludes the other allocators")
    return [a for a in request.allocators if a != NO_ALLOCATOR]


@dataclass(frozen=True)
class ArchRequest:
    """Arch search in arch space `space` under each of `budgets` (trainable parameters); `train` also trains."""

    space: str
    budgets: tuple[int, ...]
    train: bool = False
    seed: int = 0
    population: int = 16
    generations: int = 6


@dataclass
class ArchSearches:
    """Each proxy's best arch under each budget, proxy by proxy."""

    rows: list[tuple[str, ArchSearchResult]] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": name, **found.to_json()} for name, found in self.rows]

    def to_text(self) -> str:
        lines = []
        for name, f in self.rows:
            lines += [f"{name} ({f.proxy}), at most {f.max_params} parameters: {f.params} parameters, proxy score "
                      f"{f.score:.6g} ({f.evaluations} archs scored, {f.seconds:.1f} s)",
                      f"  arch: {json.dumps(f.arch)}"]
        return "\n".join(lines)


def apply_arch(proxies: dict[str, Proxy], request: ArchRequest, stats: StatsConfig, *, batch_source: str | None = None,
               progress: bool = True, notify: Callable[[str], None] | None = None) -> ArchSearches | ViTComparison:
    """Return each proxy's best arch under each budget, or with `request.train` the comparison by training.

    Candidates are randomly initialised (`stats.init_seed`) and scored on the space's
    fixed batch. Training uses the recipe of the space's benchmark (`trained_by`),
    opened with `batch_source`, built first when it is embedded and not built yet.
    """
    space = get_space(request.space)
    kwargs = dict(init_seed=stats.init_seed, batch_seed=stats.batch_seed, batch_size=stats.batch_size,
                  hessian_samples=stats.hessian_samples, device=stats.resolved_device(),
                  store_dtype=stats.torch_dtype())
    search = dict(seed=request.seed, population=request.population, generations=request.generations)
    if request.train:
        if space.trained_by is None:
            able = [n for n in sorted(ARCH_SPACES) if get_space(n).trained_by is not None]
            raise ApplyRequestError(f"--train needs a training recipe and test split, which only {', '.join(able)} "
                                    f"has (not {request.space})")
        from emq.bench.registry import open_benchmark

        bench = open_benchmark(space.trained_by, None, notify=notify, batch_source=batch_source)
        return compare_vit_digits(bench, proxies, request.budgets, progress=notify, **search, **kwargs)
    result = ArchSearches()
    for name, proxy in proxies.items():
        objective = ArchObjective(proxy, space, **kwargs)
        for budget in request.budgets:
            with tqdm(total=request.generations, desc=f"search {name} <= {budget}", unit="gen", leave=False,
                      disable=not progress) as bar:
                found = search_arch(objective, budget, progress=lambda gen, best: bar.update(1) if gen else None,
                                    **search)
            result.rows.append((name, found))
    return result
