"""A search individual: one simplified proxy program, its canonical hash and its evaluation record."""
from __future__ import annotations

from typing import Any

import numpy as np

from emq.proxy import Proxy
from search.niches import rank_vector


class Program:
    """A program in the population; `fitness` and `ranks` come from its evaluation record (None until scored).

    `fitness` is what DEAP's selection and hall of fame compare (`search.niches`); `ranks` (the
    program's ranking of the probe networks) is what decides its niche.
    """

    def __init__(self, proxy: Proxy, record: dict[str, Any] | None = None) -> None:
        self.proxy = proxy
        self.hash = proxy.canonical_hash()
        self.record: dict[str, Any] | None = None
        self.fitness: float | None = None
        self.ranks: np.ndarray | None = None
        if record is not None:
            self.set_record(record)

    def set_record(self, record: dict[str, Any]) -> None:
        """Take fitness and probe ranks from an evaluation record (a screened-out record leaves both None)."""
        self.record = record
        if record.get("fitness") is not None:
            self.fitness = float(record["fitness"])
            self.ranks = rank_vector(np.asarray(record["probe"], dtype=np.float64))
        else:
            self.fitness = None
            self.ranks = None

    def __repr__(self) -> str:
        return f"Program({self.proxy.formula()!r}, fitness={self.fitness})"
