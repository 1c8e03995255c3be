"""Lending a seeded `random.Random` stream to code that draws from the global `random` module (DEAP's tools)."""
from __future__ import annotations

import contextlib
import random
from typing import Iterator


@contextlib.contextmanager
def as_global_random(rng: random.Random) -> Iterator[None]:
    """Run the block with the global `random` module drawing from `rng`'s stream; restore both after.

    DEAP's selection draws from the global module; lending it a stream we own keeps a
    seeded run reproducible and leaves the caller's global state as it was.
    """
    saved = random.getstate()
    random.setstate(rng.getstate())
    try:
        yield
    finally:
        rng.setstate(random.getstate())
        random.setstate(saved)
