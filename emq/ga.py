"""The one genetic-algorithm core both searches share: seeded tournament selection and a hall of fame.

Proxy programs (`search/engine.py`) and bit / architecture genomes (`emq/apply/evolve.py`)
evolve with these two pieces. An individual is any object with a `fitness` attribute:
a float (higher is better), or None while it is unscored or screened out.

Every random draw comes from the `random.Random` the caller passes, never from the
global `random` module: a seeded run is reproducible, resumable from its saved stream,
and leaves the caller's global random state alone. The rules are DEAP's
(`tools.selTournament`, `tools.HallOfFame`), kept draw for draw and tie for tie, so
runs seeded before this module replaced DEAP's globals give the same results.
"""
from __future__ import annotations

import random
from bisect import bisect_right
from typing import Callable, Generic, Iterator, Protocol, Sequence, TypeVar, overload


class Scored(Protocol):
    """An individual: its fitness, None while unscored or screened out."""

    fitness: float | None


T = TypeVar("T", bound=Scored)


def tournament(candidates: Sequence[T], k: int, rng: random.Random, size: int) -> list[T]:
    """Return `k` winners, each the fittest of `size` candidates drawn with replacement from `rng`.

    The first drawn of equally fit aspirants wins. Every candidate must be scored.
    """
    # One rng.choice per aspirant, then max keeping the first best: DEAP's selTournament draws the same way.
    return [max([rng.choice(candidates) for _ in range(size)], key=_fitness) for _ in range(k)]


def _fitness(ind: Scored) -> float:
    return ind.fitness  # type: ignore[return-value]  # tournament() takes scored candidates only


class HallOfFame(Generic[T]):
    """The best `maxsize` individuals offered so far, best first, no two `similar`.

    `update` follows DEAP's HallOfFame: a newcomer enters when the hall has room or it
    beats the worst member, and only if it resembles no member; among equal fitness the
    newest ranks first. Members are kept as given, not copied: individuals are never
    changed once scored.
    """

    def __init__(self, maxsize: int, similar: Callable[[T, T], bool]) -> None:
        self.maxsize = maxsize
        self.similar = similar
        self.members: list[T] = []  # best first
        self._keys: list[float] = []  # the members' fitness, ascending (worst first), for bisect

    def update(self, population: Sequence[T]) -> None:
        """Offer every scored individual of `population`, in order."""
        for ind in population:
            if ind.fitness is None or self.maxsize == 0:
                continue
            if len(self) < self.maxsize or ind.fitness > self.members[-1].fitness:
                if any(self.similar(ind, member) for member in self.members):
                    continue
                if len(self) >= self.maxsize:
                    self.remove(-1)
                self.insert(ind)

    def insert(self, ind: T) -> None:
        """Place `ind` by fitness, ahead of members as fit as it (the size is not checked)."""
        i = bisect_right(self._keys, ind.fitness)
        self.members.insert(len(self.members) - i, ind)
        self._keys.insert(i, ind.fitness)  # type: ignore[arg-type]

    def remove(self, index: int) -> None:
        """Drop the member at `index` (negative counts from the worst)."""
        del self._keys[len(self) - (index % len(self) + 1)]
        del self.members[index]

    def restore(self, members: Sequence[T]) -> None:
        """Set the members (best first) exactly as saved, without re-sorting ties."""
        self.members = list(members)
        self._keys = [ind.fitness for ind in reversed(self.members)]  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.members)

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self.members[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.members)
