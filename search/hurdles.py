"""Multi-fidelity hurdles: a new program is scored on a uniform subset of the search split before the whole split.

Most programs a search tries are poor, and a rank correlation on a few dozen networks
already tells a poor program from a promising one. With `SearchConfig.hurdle_size` H,
every program that passes the probe screens is scored first on the first H networks of
the search split (the split is in hash order, so they are a uniform sample). Its
fitness there is compared with the hurdle: the `hurdle_quantile` of the fitness on the
same H networks of the current population's programs (the previous generation; in the
first generation, of that generation's own new programs). At or above the hurdle, the
program is scored on the whole split as without hurdles; below it, it stops.

A stopped program keeps a fitness, its subset fitness minus `STOPPED_OFFSET`: every
fitness lies in [-1, 1] (a rank correlation, or the mean or min of several), so a
stopped program ranks below every program scored on the whole split, and stopped
programs keep their order among themselves for selection. Stopped programs never enter
the hall of fame, and the log's `best` / `median` are over fully scored programs only.
A program whose subset fitness is undefined (e.g. constant on the subset) passes: the
whole split decides. Every record of a run with hurdles carries `hurdle` (its subset
fitness); a stopped one also `stopped: true`.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from emq.fitness import TrivialChoice
from search.pool import ShardedStats
from search.screening import Outcome, score_outcome

#: Subtracted from a stopped program's subset fitness (in [-1, 1]) so it ranks below any fully scored one.
STOPPED_OFFSET = 4.0


@dataclass(frozen=True)
class Hurdle:
    """The subset a new program is first scored on: its networks in the pool, its truth and trivial controls."""

    size: int
    quantile: float
    data: ShardedStats
    truth: dict[str, np.ndarray]
    controls: dict[str, tuple[TrivialChoice, np.ndarray]]

    @classmethod
    def cut(cls, size: int, quantile: float, data: ShardedStats, truth: Mapping[str, np.ndarray],
            controls: Mapping[str, tuple[TrivialChoice, np.ndarray]]) -> "Hurdle":
        """Return the hurdle on the first `size` networks (`data` holds them) of the search split's `truth`."""
        return cls(size, quantile, data, {t: np.asarray(v)[:size] for t, v in truth.items()},
                   {t: (c, np.asarray(v)[:size]) for t, (c, v) in controls.items()})


def hurdle_size(configured: int, n_search: int) -> int:
    """Return the subset size in use: 0 (off) when none is configured or it would cover the whole split."""
    return configured if 0 < configured < n_search else 0


def threshold(reference: Iterable[float], quantile: float) -> float:
    """Return the `quantile` of the finite `reference` fitness values (-inf when there are none: all pass)."""
    values = [v for v in reference if v is not None and np.isfinite(v)]
    return float(np.quantile(np.asarray(values, dtype=np.float64), quantile)) if values else -np.inf


def population_reference(records: Sequence[Mapping[str, Any] | None]) -> list[float]:
    """Return the subset fitness of the population's programs that have one (those screened with a hurdle)."""
    return [r["hurdle"] for r in records if r is not None and r.get("hurdle") is not None]


def passes(subset_fitness: float | None, limit: float) -> bool:
    """Whether a program goes on to the whole split: its subset fitness reaches `limit`, or is undefined."""
    return subset_fitness is None or subset_fitness >= limit


def stopped_record(subset: Mapping[str, Any]) -> dict[str, Any]:
    """Return the record of a program stopped at the hurdle, from its record on the subset (fitness lowered)."""
    return {**subset, "fitness": subset["fitness"] - STOPPED_OFFSET, "hurdle": subset["fitness"], "stopped": True}


def is_stopped(record: Mapping[str, Any] | None) -> bool:
    """Whether `record` is that of a program stopped at the hurdle (not scored on the whole split)."""
    return bool(record and record.get("stopped"))


def judge(hurdle: Hurdle, results: Sequence[tuple[str, Outcome, np.ndarray, Counter]],
          population: Sequence[Mapping[str, Any] | None],
          record: Callable[[Outcome], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return hash -> record on the subset of each program scored there; below the hurdle, the stopped record.

    `results` are (hash, probe-screened outcome, subset scores, failures); `population`
    the records of the current population (the hurdle's reference; empty in the first
    generation, which is then measured against itself); `record` gives an outcome's
    record against the subset's truth. The outcomes are left as they were.
    """
    subset = {}
    for hash_, out, scores, failures in results:
        trial = score_outcome(dataclasses.replace(out, detail=dict(out.detail)), scores, failures)
        subset[hash_] = record(trial)
    reference = population_reference(population) or [r["fitness"] for r in subset.values()]
    limit = threshold(reference, hurdle.quantile)
    return {h: r if passes(r["fitness"], limit) else stopped_record(r) for h, r in subset.items()}
