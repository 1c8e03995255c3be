"""What emq.ga adds to DEAP: a run's own stream for DEAP's global draws, aging, a restored hall; evolve on DEAP."""
from __future__ import annotations

import random
from dataclasses import dataclass

from deap import tools

from emq.apply.evolve import Operators, evolve
from emq.ga import aged, drawing_from, global_draws, restore_hall
from search.niches import NicheHallOfFame


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


def select(stream: random.Random):
    return drawing_from(stream, tools.selTournament)


def test_deap_tournament_on_a_stream_same_seed_gives_same_winners():
    pop = population()
    first = select(random.Random(7))(pop, 20, tournsize=3)
    again = select(random.Random(7))(pop, 20, tournsize=3)
    other = select(random.Random(8))(pop, 20, tournsize=3)
    assert names(first) == names(again)
    assert names(first) != names(other)


def test_drawing_from_a_stream_leaves_the_callers_global_random_state_alone():
    random.seed(123)
    before = random.getstate()
    select(random.Random(1))(population(), 50, tournsize=3)
    assert random.getstate() == before


def test_global_draws_between_calls_do_not_change_the_runs_draws():
    pop = population()
    quiet, noisy = select(random.Random(3)), select(random.Random(3))
    plain = [names(quiet(pop, 4, tournsize=3)) for _ in range(5)]
    mixed = []
    for _ in range(5):
        random.random()  # the caller (or a fitness function) draws from the global module between selections
        mixed.append(names(noisy(pop, 4, tournsize=3)))
    assert mixed == plain


def test_the_stream_advances_by_deaps_draws_only_and_saves_as_plain_state():
    stream = random.Random(5)
    select(stream)(population(), 4, tournsize=3)
    expected = random.Random(5)
    for _ in range(4 * 3):  # DEAP's selTournament: one random.choice per aspirant
        expected.choice(range(12))
    assert stream.getstate() == expected.getstate()
    resumed = random.Random()
    resumed.setstate(stream.getstate())  # what a checkpoint saves and a resumed run restores
    assert names(select(resumed)(population(), 6, tournsize=3)) == names(select(stream)(population(), 6, tournsize=3))


def test_global_draws_puts_the_callers_state_back_even_after_an_error():
    random.seed(9)
    before = random.getstate()
    stream = random.Random(1)
    try:
        with global_draws(stream):
            random.random()
            raise RuntimeError("operator failed")
    except RuntimeError:
        pass
    assert random.getstate() == before
    assert stream.getstate() != random.Random(1).getstate()  # the draw made inside still counts for the run


def test_deaps_tournament_winner_is_the_fittest_aspirant_and_the_first_drawn_wins_ties():
    pop = [Ind(0, 1.0), Ind(1, 1.0), Ind(2, 0.0)]
    for seed in range(30):
        (winner,) = select(random.Random(seed))(pop, 1, tournsize=2)
        draws = random.Random(seed)
        aspirants = [draws.choice(pop) for _ in range(2)]
        best = max(a.fitness for a in aspirants)
        assert winner is next(a for a in aspirants if a.fitness == best)


def test_aging_removes_the_oldest_as_each_child_joins_once_the_queue_is_full():
    assert aged([1, 2, 3], [4], 3) == [2, 3, 4]  # the population minus its oldest plus the child
    assert aged([1, 2, 3], [4, 5], 3) == [3, 4, 5]  # a batch is those steps in order
    assert aged([1, 2], [3], 4) == [1, 2, 3]  # not full yet: nobody leaves
    assert aged([1, 2, 3], [4, 5, 6, 7], 3) == [5, 6, 7]


def test_restore_hall_keeps_the_saved_order():
    members = [Ind(3, 2.0), Ind(1, 2.0), Ind(2, 1.0)]
    hof = tools.HallOfFame(4, similar=lambda a, b: a.name == b.name)
    restore_hall(hof, members)
    hof.update([Ind(9, 2.0)])
    assert names(hof) == [9, 3, 1, 2]  # a newcomer as fit as members ranks ahead of them, as in a run never saved


@dataclass
class Prog:
    """A stand-in for search.individual.Program: what the niche hall of fame reads."""

    hash: str
    fitness: float | None
    ranks: object = None


def test_niche_hall_of_fame_keeps_one_per_niche_the_better_replacing_the_member():
    hof = NicheHallOfFame(3)
    hof.update([Prog("a", 1.0), Prog("b", 2.0), Prog("a", 3.0), Prog("c", None), Prog("d", 0.5), Prog("e", 0.1)])
    assert [(m.hash, m.fitness) for m in hof] == [("a", 3.0), ("b", 2.0), ("d", 0.5)]
    hof.update([Prog("b", 1.5)])  # worse than its niche's member: refused
    hof.update([Prog("f", 0.7)])  # beats the worst: it leaves
    assert [(m.hash, m.fitness) for m in hof] == [("a", 3.0), ("b", 2.0), ("f", 0.7)]
    empty = NicheHallOfFame(0)
    empty.update([Prog("a", 1.0)])
    assert len(empty) == 0


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
        random.random()  # a fitness that draws from the global module changes neither the run nor the caller's stream
        return float(sum(v * (i + 1) for i, v in enumerate(g)) // 4)  # many ties

    random.seed(99)
    first = evolve(toy_operators(), fitness, population=10, generations=6, seed=4)
    again = evolve(toy_operators(), fitness, population=10, generations=6, seed=4)
    after = random.getstate()
    random.seed(99)
    for _ in range(first.evaluations + again.evaluations):  # one fitness call per distinct genome
        random.random()
    assert after == random.getstate()  # only the fitness function's own draws moved the caller's stream
    assert (first.best, first.fitness, first.top, first.history) == (again.best, again.fitness, again.top, again.history)
    assert sum(first.best) <= 15
    assert first.fitness == max(row["best"] for row in first.history)
