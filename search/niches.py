"""Niches: programs that rank the probe networks (nearly) the same way count as one.

Two programs share a niche when they have the same canonical hash or when the
Spearman correlation of their scores on the probe candidates reaches the
threshold (0.98 by default): `sum(abs(x))` and `l1(x)`, or a proxy and its
monotone transform, are one idea, not two. Selection runs DEAP's tournaments among
the best program of each niche, so one idea cannot take over the population, and the
hall of fame (DEAP's, with its own update rule) keeps at most one program per niche.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from deap import tools
from scipy.stats import rankdata

DEFAULT_THRESHOLD = 0.98


def rank_vector(scores: np.ndarray) -> np.ndarray:
    """Return the centred, unit-norm ranks of `scores`, so a dot product of two is their Spearman rho."""
    r = rankdata(np.asarray(scores, dtype=np.float64))
    r = r - r.mean()
    norm = np.linalg.norm(r)
    return r / norm if norm > 0 else r


def same_niche(a: Any, b: Any, threshold: float = DEFAULT_THRESHOLD) -> bool:
    """True when two evaluated individuals (with `.hash` and `.ranks`) are one niche."""
    if a.hash == b.hash:
        return True
    if a.ranks is None or b.ranks is None:
        return False
    return float(np.dot(a.ranks, b.ranks)) >= threshold


def assign_niches(individuals: Sequence[Any], threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Return a niche id per individual; each joins the first better-ranked representative it resembles.

    Individuals are visited best first (fitness, then hash, so ties are deterministic);
    one that resembles no representative so far founds a niche. Ids number the
    niches in order of their representatives' fitness.
    """
    order = sorted(range(len(individuals)), key=lambda i: (-individuals[i].fitness, individuals[i].hash))
    reps: list[int] = []
    niche = [0] * len(individuals)
    for i in order:
        ind = individuals[i]
        found = -1
        for k, r in enumerate(reps):
            if same_niche(ind, individuals[r], threshold):
                found = k
                break
        if found < 0:
            reps.append(i)
            found = len(reps) - 1
        niche[i] = found
    return niche


def representatives(individuals: Sequence[Any], threshold: float = DEFAULT_THRESHOLD) -> list[Any]:
    """Return the best individual of each niche, best niche first."""
    niche = assign_niches(individuals, threshold)
    best: dict[int, Any] = {}
    for ind, k in zip(individuals, niche):
        if k not in best or (ind.fitness, ind.hash) > (best[k].fitness, best[k].hash):
            best[k] = ind
    return [best[k] for k in sorted(best)]


def count_niches(individuals: Sequence[Any], threshold: float = DEFAULT_THRESHOLD) -> int:
    """Return the number of distinct niches among evaluated individuals."""
    return len(set(assign_niches(individuals, threshold))) if individuals else 0


def tournament(candidates: Sequence[Any], k: int, tournsize: int = 3) -> list[Any]:
    """Return `k` winners of DEAP's `selTournament` among `candidates` (at most all of them per tournament).

    DEAP draws from the global `random` module: register this on a toolbox through
    `emq.ga.drawing_from`, so the draws come from the run's own stream.
    """
    if not candidates:
        return []
    return tools.selTournament(list(candidates), k, min(tournsize, len(candidates)))


class NicheHallOfFame(tools.HallOfFame):
    """DEAP's hall of fame of the best `maxsize` programs, with at most one per niche.

    DEAP's `update` skips a newcomer similar to a member even when it is better, and
    compares fitness objects that screened-out programs lack; here screened-out
    programs are passed over and the better program replaces the member of its niche,
    so the best program ever seen is always kept. Among equal fitness the newest ranks
    first (DEAP's `insert`, which stores a copy).
    """

    def __init__(self, maxsize: int, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        super().__init__(maxsize, similar=lambda a, b: same_niche(a, b, threshold))

    def update(self, population: Sequence[Any]) -> None:
        """Offer every scored program of `population`, in order."""
        for ind in population:
            if ind.fitness is None or self.maxsize == 0:
                continue
            clash = [i for i, member in enumerate(self.items) if self.similar(ind, member)]
            if clash:
                if all(ind.fitness > self.items[i].fitness for i in clash):
                    for i in sorted(clash, reverse=True):
                        self.remove(i)
                    self.insert(ind)
                continue
            if len(self) < self.maxsize:
                self.insert(ind)
            elif ind.fitness > self[-1].fitness:
                self.remove(-1)
                self.insert(ind)
