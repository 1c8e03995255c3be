"""What `run_search` checks before it starts, and how it times a generation.

`checked_truth` and `checked_predictors` fail naming the column or predictor whose
length does not match the search networks; `PhaseClock` splits a generation's wall
time by phase for the log row (`time`, `seconds`, `programs_per_s`).
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from emq.stats import NetworkStats
from search.config import SearchConfig


def checked_truth(truth: Mapping[str, np.ndarray], config: SearchConfig,
                   n: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Return the ground truth as float arrays and the targets searched, or fail naming the bad column."""
    truth = {k: np.asarray(v, dtype=np.float64) for k, v in truth.items()}
    targets = list(config.targets or truth)
    missing = [t for t in targets if t not in truth]
    if missing:
        raise KeyError(f"unknown target(s) {missing}; ground-truth columns: {', '.join(truth)}")
    for t in targets:
        if len(truth[t]) != n:
            raise ValueError(f"target {t!r} has {len(truth[t])} values for {n} search networks")
    return truth, targets


def checked_predictors(trivial: Mapping[str, np.ndarray] | None, features: Mapping[str, np.ndarray] | None,
                        search_stats: Sequence[NetworkStats]) -> dict[str, np.ndarray]:
    """Return the trivial predictors (#params added from the statistics), each checked to cover every network."""
    n = len(search_stats)
    predictors = dict(trivial or {})
    predictors.setdefault("params", np.array([float(sum(s.params.values())) for s in search_stats]))
    for name, values in [*predictors.items(), *(features or {}).items()]:
        if len(values) != n:
            raise ValueError(f"trivial predictor / feature {name!r} has {len(values)} values for {n} search networks")
    return predictors


class PhaseClock:
    """Seconds of one generation by phase (the log row's `time`)."""

    PHASES = ("variation", "screening", "evaluation", "selection", "checkpoint")

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    def lap(self, phase: str) -> None:
        """Add the time since the previous lap to `phase`."""
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now

    def fill(self, row: dict[str, Any]) -> None:
        total = self.last - self.start
        row["seconds"] = round(total, 4)
        row["time"] = {k: round(v, 4) for k, v in self.seconds.items()}
        row["programs_per_s"] = round(row["evaluations"] / total, 2) if total > 0 else None
