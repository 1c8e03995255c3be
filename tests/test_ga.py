"""The GA core (emq.ga): seeded tournament and hall of fame, drawing only from the stream it is given."""
from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from emq.apply.evolve import Operators, evolve
from emq.ga import HallOfFame, tournament


@dataclass
class Ind:
    name: int
    fitness: float | None


def population(n: int = 12, seed: int = 0, levels: int = 4) -> list[Ind]:
    """Individuals with few distinct fitness values, so ties are common."""
    rng = random.Random(seed)
    return [Ind(i, float(rng.randrange(levels))) for i in range(n)]


def names(individuals) -> list[int]:
    return [ind.name for ind in individuals]


def test_tournament_same_seed_gives_same_winners():
    pop = population()
    first = tournament(pop, 20, random.Random(7), 3)
    again = tournament(pop, 20, random.Random(7), 3)
    other = tournament(pop, 20, random.Random(8), 3)
    assert names(first) == names(again)
    assert names(first) != names(other)


def test_tournament_leaves_the_global_random_state_alone():
    random.seed(123)
    before = random.getstate()
    tournament(population(), 50, random.Random(1), 3)
    assert random.getstate() == before


def test_tournament_advances_only_the_stream_it_is_given():
    rng = random.Random(5)
    tournament(population(), 4, rng, 3)
    expected = random.Random(5)
    for _ in range(4 * 3):
        expected.choice(range(12))
    assert rng.getstate() == expected.getstate()


def test_tournament_winner_is_the_fittest_aspirant_and_the_first_drawn_wins_ties():
    pop = [Ind(0, 1.0), Ind(1, 1.0), Ind(2, 0.0)]
    for seed in range(30):
        (winner,) = tournament(pop, 1, random.Random(seed), 2)
        draws = random.Random(seed)
        aspirants = [draws.choice(pop) for _ in range(2)]
        best = max(a.fitness for a in aspirants)
        assert winner is next(a for a in aspirants if a.fitness == best)


def test_tournament_picks_what_deaps_seltournament_picks_from_the_same_state():
    tools = pytest.importorskip("deap.tools")
    base = pytest.importorskip("deap.base")

    class Fitness(base.Fitness):
        weights = (1.0,)

    class DeapInd:
        def __init__(self, ind: Ind) -> None:
            self.name = ind.name
            self.fitness = Fitness((ind.fitness,))

    for seed in range(5):
        pop = population(15, seed)
        mine = tournament(pop, 25, random.Random(seed), 3)
        saved = random.getstate()
        random.seed(seed)
        try:
            theirs = tools.selTournament([DeapInd(i) for i in pop], 25, tournsize=3)
        finally:
            random.setstate(saved)
        assert names(mine) == names(theirs)


def same_parity(a: Ind, b: Ind) -> bool:
    return a.name % 5 == b.name % 5


def test_hall_of_fame_keeps_the_best_distinct_members_best_first():
    hof = HallOfFame(3, similar=same_parity)
    hof.update([Ind(0, 1.0), Ind(5, 9.0), Ind(1, 2.0), Ind(2, 3.0), Ind(3, 0.5), Ind(4, None)])
    assert names(hof) == [2, 1, 0]  # 5 resembles 0 (already in) and is refused, 3 is worse than the worst, 4 unscored
    hof.update([Ind(6, 5.0)])  # resembles 1: refused even though it is better
    hof.update([Ind(8, 4.0)])
    assert names(hof) == [8, 2, 1]
    assert [m.fitness for m in hof] == [4.0, 3.0, 2.0]


def test_hall_of_fame_orders_and_ties_like_deaps():
    tools = pytest.importorskip("deap.tools")
    base = pytest.importorskip("deap.base")

    class Fitness(base.Fitness):
        weights = (1.0,)

    class DeapInd:
        def __init__(self, ind: Ind) -> None:
            self.name = ind.name
            self.fitness = Fitness((ind.fitness,))

    for seed in range(20):
        mine = HallOfFame(5, similar=lambda a, b: a.name % 7 == b.name % 7)
        theirs = tools.HallOfFame(5, similar=lambda a, b: a.name % 7 == b.name % 7)
        for chunk in range(6):
            pop = population(8, seed * 100 + chunk, levels=3)
            for ind in pop:
                ind.name += 8 * chunk
            mine.update(pop)
            theirs.update([DeapInd(i) for i in pop])
            assert names(mine) == names(theirs)


def test_hall_of_fame_restore_keeps_the_saved_order():
    members = [Ind(3, 2.0), Ind(1, 2.0), Ind(2, 1.0)]
    hof = HallOfFame(4, similar=lambda a, b: a.name == b.name)
    hof.restore(members)
    hof.update([Ind(9, 2.0)])
    assert names(hof) == [9, 3, 1, 2]  # a newcomer as fit as members ranks ahead of them, as in a run never saved


def toy_operators(n: int = 10) -> Operators[tuple[int, ...]]:
    def mutate(g, rng):
        out = list(g)
        out[rng.randrange(n)] = rng.randint(0, 3)
        return tuple(out)

    def crossover(a, b, rng):
        i = rng.randrange(1, n)
        return a[:i] + b[i:], b[:i] + a[i:]

    def repair(g, rng):
        out = list(g)
        while sum(out) > 15:
            i = rng.randrange(n)
            out[i] = max(0, out[i] - 1)
        return tuple(out)

    return Operators(lambda rng: tuple(rng.randint(0, 3) for _ in range(n)), mutate, crossover, repair, key=lambda g: g)


def test_evolve_same_seed_same_run_and_the_global_random_state_is_untouched():
    def fitness(g):
        return float(sum(v * (i + 1) for i, v in enumerate(g)) // 4)  # many ties

    random.seed(99)
    before = random.getstate()
    first = evolve(toy_operators(), fitness, population=10, generations=6, seed=4)
    again = evolve(toy_operators(), fitness, population=10, generations=6, seed=4)
    assert random.getstate() == before
    assert (first.best, first.fitness, first.top, first.history) == (again.best, again.fitness, again.top, again.history)
    assert sum(first.best) <= 15
    assert first.fitness == max(row["best"] for row in first.history)
