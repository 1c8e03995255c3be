"""What DEAP lacks for the searches that evolve on it: a run's own stream for DEAP's global draws, and a saved hall.

Proxy programs (`search/engine.py`) and bit / architecture genomes (`emq/apply/evolve.py`)
evolve on DEAP: each run registers its operators on a `deap.base.Toolbox`, selects with
`deap.tools.selTournament`, keeps its best in a `deap.tools.HallOfFame` (the genome
search as is; the proxy search in `search.niches.NicheHallOfFame`, DEAP's hall with at
most one program per niche), and the proxy search's per-generation figures come from
`deap.tools.Statistics` and `deap.tools.Logbook`.

DEAP's selection draws from the global `random` module. A run keeps those draws in a
stream of its own, a `random.Random` (`drawing_from`): its state is put into the global
module for the length of one DEAP call and taken back out after it, and the caller's
global state is put back. So the same seed gives the same draws, a checkpoint saves the
stream as plain data (`random.getstate()` as DEAP left it) and a resumed run continues it
bit for bit, and whatever the caller (or a fitness function) does with the global
`random` module between calls neither changes the run nor is changed by it.

`aged` is the replacement rule of regularized (aging) evolution (Real et al. 2019), which
DEAP's algorithms do not offer: children join the population at its end and the oldest
leave. `restore_hall` puts a saved hall of fame back in its saved order (DEAP's `insert`
would put each restored member ahead of the members as fit as it, reversing ties).
"""
from __future__ import annotations

import functools
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

from deap import tools

R = TypeVar("R")
T = TypeVar("T")


@contextmanager
def global_draws(stream: random.Random) -> Iterator[None]:
    """Let the global `random` module draw from `stream` inside the block; after it the caller's state is back."""
    caller = random.getstate()
    random.setstate(stream.getstate())
    try:
        yield
    finally:
        stream.setstate(random.getstate())
        random.setstate(caller)


def drawing_from(stream: random.Random, function: Callable[..., R]) -> Callable[..., R]:
    """Return `function` (a DEAP operator) with its draws from the global `random` module taken from `stream`."""
    @functools.wraps(function)
    def drawing(*args: Any, **kwargs: Any) -> R:
        with global_draws(stream):
            return function(*args, **kwargs)

    return drawing


def restore_hall(hall: tools.HallOfFame, members: Sequence[Any]) -> None:
    """Set a DEAP hall of fame's members (best first) exactly as saved, without re-sorting ties."""
    hall.items = list(members)
    hall.keys = [ind.fitness for ind in reversed(hall.items)]


def aged(population: Sequence[T], children: Sequence[T], size: int) -> list[T]:
    """Return the aging queue (oldest first) after `children` join its end and the oldest leave, `size` at most.

    One child at a time, this is regularized evolution's step: the population minus its
    oldest plus the child (once the queue is full); a batch is those steps in order.
    """
    joined = [*population, *children]
    return joined[max(0, len(joined) - size):]
