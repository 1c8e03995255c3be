"""The best bit configuration under a size budget for a `BitObjective` (`allocate`), never above the budget.

- `milp`: when the proxy is a monotone function of a sum of per-layer terms
  (`emq.apply.decompose`), the separable model (`emq.apply.bits`) makes the problem a
  multiple-choice knapsack, solved to proven optimality with `scipy.optimize.milp`
  (HiGHS, gap 0; `emq.apply.knapsack`);
- `ga`: a seeded genetic algorithm (`emq.apply.evolve`) over configurations; an over-budget child
  is repaired by lowering the bits of random layers (chosen with probability
  proportional to their weights) until it fits;
- `auto`: milp when the proxy is separable (and statistics are not exact), else ga.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from emq.apply.bits import BitObjective, Separable
from emq.apply.budget import Bits, Budget, average_bits, check_budget, repair_bits, size_bits, size_mb
from emq.apply.decompose import layer_sum
from emq.apply.evolve import Operators, evolve
from emq.apply.knapsack import maximise_within
from emq.errors import NotSeparableError
from emq.proxy import Proxy

METHODS: tuple[str, ...] = ("auto", "milp", "ga")


@dataclass
class BitAllocation:
    """One allocation: the bits per layer, their size, the proxy's score, and how it was found.

    `evaluations` counts proxy evaluations: distinct configurations (ga) or per-layer terms (milp).
    """

    bits: dict[str, int]
    method: str
    score: float
    size_bits: int
    size_mb: float
    average_bits: float
    budget: str
    cap_bits: int
    optimal: bool
    evaluations: int
    seconds: float
    proxy: str = ""
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = self.score if math.isfinite(self.score) else str(self.score)
        return data


def check_method(proxy: Proxy, method: str, exact: bool = False) -> None:
    """Fail early when `method` cannot run on `proxy` (milp needs a layer-separable proxy and the separable model)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "milp" and exact:
        raise NotSeparableError("--method milp solves the separable statistics model; exact statistics need --method ga")
    if method == "milp" and layer_sum(proxy) is None:
        raise NotSeparableError(f"--method milp needs a proxy that is a monotone function of sums over layers "
                                f"(sum_layers / mean_layers / wmean_layers combined by n_neg, n_add, n_sub); "
                                f"{proxy.formula()} is not; use --method ga")


def allocate(
    objective: BitObjective,
    budget: Budget,
    *,
    method: str = "auto",
    seed: int = 0,
    population: int = 30,
    generations: int = 20,
    progress: Callable[[int, float], None] | None = None,
) -> BitAllocation:
    """Return the configuration maximising `objective` whose size is within `budget` (never above it)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    start = time.perf_counter()
    params = [objective.params[n] for n in objective.layers]
    cap = check_budget(budget, objective.params, objective.choices)
    notes: list[str] = []
    sep = objective.separable() if method in ("auto", "milp") else None
    if method == "milp" and sep is None:
        raise NotSeparableError(f"--method milp needs a proxy that is a sum of per-layer terms: "
                                f"{objective.why_not_separable}; use --method ga")
    if sep is not None:
        widths, optimal = _solve_milp(sep, params, objective.choices, cap)
        used, history, evaluations = "milp", [], sep.coef.size
        if np.allclose(np.nan_to_num(sep.coef - np.nanmax(sep.coef, axis=1, keepdims=True), nan=0.0), 0.0):
            notes.append("the proxy does not depend on the bit-widths: every feasible configuration scores the same")
    else:
        if method == "auto":
            notes.append(f"genetic algorithm: {objective.why_not_separable}")
        widths, history, evaluations = _run_ga(objective, params, cap, seed, population, generations, progress)
        used, optimal = "ga", False
    bits = dict(zip(objective.layers, widths))
    assert size_bits(bits, objective.params) <= cap, "allocation exceeds the budget"
    return BitAllocation(
        bits=bits, method=used, score=objective.score(widths), size_bits=size_bits(bits, objective.params),
        size_mb=size_mb(bits, objective.params), average_bits=average_bits(bits, objective.params),
        budget=budget.describe(), cap_bits=cap, optimal=optimal, evaluations=evaluations,
        seconds=time.perf_counter() - start, proxy=objective.proxy.formula(), notes=notes, history=history)


def _solve_milp(sep: Separable, params: Sequence[int], choices: Sequence[int], cap: int) -> tuple[Bits, bool]:
    return maximise_within(sep.direction * sep.coef, params, choices, cap)


def _run_ga(objective: BitObjective, params: Sequence[int], cap: int, seed: int, population: int, generations: int,
            progress: Callable[[int, float], None] | None) -> tuple[Bits, list[dict[str, float]], int]:
    choices = objective.choices
    n = len(params)

    def mutate(w: Bits, rng: random.Random) -> Bits:
        out = list(w)
        hits = [i for i in range(n) if rng.random() < 2.0 / n] or [rng.randrange(n)]
        for i in hits:
            out[i] = rng.choice([b for b in choices if b != out[i]])
        return tuple(out)

    def crossover(a: Bits, b: Bits, rng: random.Random) -> tuple[Bits, Bits]:
        mask = [rng.random() < 0.5 for _ in range(n)]
        return (tuple(x if m else y for x, y, m in zip(a, b, mask)),
                tuple(y if m else x for x, y, m in zip(a, b, mask)))

    ops = Operators(
        sample=lambda rng: tuple(rng.choice(choices) for _ in range(n)),
        mutate=mutate,
        crossover=crossover,
        repair=lambda w, rng: repair_bits(w, params, choices, cap, rng),
        key=lambda w: w,
    )
    # Every uniform configuration that fits seeds the first population.
    seeds = [tuple([b] * n) for b in reversed(choices) if b * sum(params) <= cap]
    result = evolve(ops, objective.score, population=population, generations=generations, seed=seed, seeds=seeds,
                    progress=progress)
    return result.best, result.history, result.evaluations
