"""The replicate ceiling: how well a network's function predicts its own trained accuracy.

On NAS-Bench-201 many cells compute the same function (an isomorphism class) and each
was trained separately, so their accuracies differ only by training noise. A proxy sees
a network, not its training run: the best it can do for a cell is the accuracy its
function earns on average. Predicting each cell by the mean accuracy of the *other*
members of its class (leave one out) and rank-correlating that with the truth gives the
agreement of independent replicates: a proxy whose held-out Kendall approaches it has
little left to gain; one far below it does.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from emq.fitness import Metric, kendall


@dataclass(frozen=True)
class Ceiling:
    """The replicate ceiling of one target on one set of candidates."""

    value: float  # metric(leave-one-out class mean, truth) over the cells that have a replicate
    n_cells: int  # cells in classes with >= 2 members (with ground truth) among the candidates
    n_classes: int  # such classes

    def to_json(self) -> dict[str, float | int]:
        return {"value": self.value, "n_cells": self.n_cells, "n_classes": self.n_classes}


def replicate_ceiling(classes: Sequence[str], truth: np.ndarray, metric: Metric = kendall) -> Ceiling:
    """Return the metric between each replicated cell's truth and the mean truth of the rest of its class.

    `classes[i]` names the function candidate i computes (e.g. NB201's canonical form);
    candidates without ground truth (NaN) are left out, as are classes of one.
    """
    truth = np.asarray(truth, dtype=np.float64)
    if len(classes) != len(truth):
        raise ValueError(f"{len(classes)} classes for {len(truth)} ground-truth values")
    members: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(classes):
        if np.isfinite(truth[i]):
            members[name].append(i)
    replicated = [idx for idx in members.values() if len(idx) >= 2]
    cells, predicted = [], []
    for idx in replicated:
        values = truth[idx]
        total = values.sum()
        for i, v in zip(idx, values):
            cells.append(i)
            predicted.append((total - v) / (len(idx) - 1))
    if len(cells) < 3:
        return Ceiling(float("nan"), len(cells), len(replicated))
    return Ceiling(metric(np.asarray(predicted), truth[cells]), len(cells), len(replicated))
