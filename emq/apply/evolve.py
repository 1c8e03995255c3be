"""A small seeded genetic algorithm over any genome (bit configurations, architectures), on DEAP.

The caller supplies the genome operators (sample, mutate, crossover, repair into the
budget) and the fitness; they are registered on a `deap.base.Toolbox` beside DEAP's
`tools.selTournament`, and the best genomes are kept in DEAP's `tools.HallOfFame`.
The operators draw from one `random.Random(seed)`; DEAP's selection draws from a
second stream seeded from it, lent to the global `random` module only for each
selection (`emq.ga.drawing_from`). So the same seed gives the same run, and the
caller's global random state is left as it was.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, TypeVar

from deap import base, tools

from emq.ga import drawing_from

G = TypeVar("G")


@dataclass
class Genome(Generic[G]):
    """An individual: one genome value, its hashable key and its fitness (non-finite scores rank last as -inf)."""

    value: G
    key: Hashable
    fitness: float


@dataclass
class Operators(Generic[G]):
    """How genomes are drawn, varied, kept within the budget and told apart."""

    sample: Callable[[random.Random], G]
    mutate: Callable[[G, random.Random], G]
    crossover: Callable[[G, G, random.Random], tuple[G, G]]
    repair: Callable[[G, random.Random], G]
    key: Callable[[G], Hashable]


@dataclass
class Evolution(Generic[G]):
    """What `evolve` gives back: the best genome, its fitness, and one history row per generation."""

    best: G
    fitness: float
    evaluations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    top: list[tuple[G, float]] = field(default_factory=list)


def evolve(
    ops: Operators[G],
    fitness: Callable[[G], float],
    *,
    population: int = 30,
    generations: int = 20,
    seed: int = 0,
    seeds: list[G] | tuple[G, ...] = (),
    elite: int = 2,
    tournament: int = 3,
    cx_prob: float = 0.6,
    mut_prob: float = 0.5,
    top: int = 5,
    progress: Callable[[int, float], None] | None = None,
) -> Evolution[G]:
    """Return the fittest genome found by a generational GA with tournament selection and elitism.

    Every genome is repaired into the budget before it is scored, so the result is
    always feasible. `seeds` (repaired too) join the first population. Scores are
    cached by genome key; a non-finite score ranks last. Each generation is the
    `elite` best genomes ever seen (the hall of fame) plus `population - elite`
    children of tournament winners.
    """
    if population < 2 or generations < 0:
        raise ValueError(f"population must be >= 2 and generations >= 0, got {population} and {generations}")
    start = time.perf_counter()
    rng = random.Random(seed)
    toolbox = base.Toolbox()
    toolbox.register("generate", ops.sample, rng)
    toolbox.register("mate", lambda a, b: ops.crossover(a, b, rng))
    toolbox.register("mutate", lambda g: ops.mutate(g, rng))
    # DEAP draws its tournaments from the global random module: lend it a stream of this run's own.
    toolbox.register("select", drawing_from(random.Random(rng.getrandbits(64)), tools.selTournament),
                     tournsize=tournament)
    cache: dict[Hashable, float] = {}

    def make(value: G) -> Genome[G]:
        value = ops.repair(value, rng)
        key = ops.key(value)
        if key not in cache:
            score = float(fitness(value))
            cache[key] = score if math.isfinite(score) else -math.inf
        return Genome(value, key, cache[key])

    pop = [make(s) for s in list(seeds)[:population]]
    while len(pop) < population:
        pop.append(make(toolbox.generate()))
    hof = tools.HallOfFame(max(top, elite), similar=lambda a, b: a.key == b.key)
    hof.update(pop)
    history = [_row(0, pop, len(cache))]
    if progress:
        progress(0, hof[0].fitness)
    for gen in range(1, generations + 1):
        parents = toolbox.select(pop, population - elite)
        children = [p.value for p in parents]
        for i in range(1, len(children), 2):
            if rng.random() < cx_prob:
                children[i - 1], children[i] = toolbox.mate(children[i - 1], children[i])
        children = [toolbox.mutate(c) if rng.random() < mut_prob else c for c in children]
        pop = [make(c) for c in children] + [make(h.value) for h in hof[:elite]]
        hof.update(pop)
        history.append(_row(gen, pop, len(cache)))
        if progress:
            progress(gen, hof[0].fitness)
    best = hof[0]
    return Evolution(best.value, best.fitness, len(cache), time.perf_counter() - start, history,
                     [(h.value, h.fitness) for h in hof[:top]])


def _row(gen: int, pop: list[Genome[Any]], evaluations: int) -> dict[str, float]:
    scores = [ind.fitness for ind in pop]
    finite = [s for s in scores if math.isfinite(s)]
    return {"generation": gen, "best": max(scores), "mean": sum(finite) / len(finite) if finite else math.nan,
            "evaluations": evaluations}
