"""Rank agreement between proxy scores and ground truth: Kendall, Spearman, Pearson, intervals, splits."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

Metric = Callable[[np.ndarray, np.ndarray], float]


def _valid(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if scores.shape != truth.shape:
        raise ValueError(f"scores ({scores.shape}) and ground truth ({truth.shape}) differ in length")
    keep = np.isfinite(truth)  # missing ground truth (NaN) is skipped, not a failure of the proxy
    return scores[keep], truth[keep]


def _correlation(fn: Callable, scores: np.ndarray, truth: np.ndarray) -> float:
    s, t = _valid(scores, truth)
    if len(s) < 3 or not np.all(np.isfinite(s)) or np.ptp(s) == 0 or np.ptp(t) == 0:
        return float("nan")  # undefined: too few points, non-finite or constant scores
    return float(fn(s, t)[0])


def kendall(scores: np.ndarray, truth: np.ndarray) -> float:
    """Return Kendall's tau-b (NaN when undefined, e.g. constant or non-finite scores)."""
    return _correlation(sps.kendalltau, scores, truth)


def spearman(scores: np.ndarray, truth: np.ndarray) -> float:
    """Return Spearman's rho (NaN when undefined)."""
    return _correlation(sps.spearmanr, scores, truth)


def pearson(scores: np.ndarray, truth: np.ndarray) -> float:
    """Return Pearson's r (NaN when undefined)."""
    return _correlation(sps.pearsonr, scores, truth)


METRICS: dict[str, Metric] = {"kendall": kendall, "spearman": spearman, "pearson": pearson}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name]


def bootstrap_interval(
    scores: np.ndarray, truth: np.ndarray, metric: Metric = kendall, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Return the percentile bootstrap interval of `metric` over candidates (resampled with replacement)."""
    s, t = _valid(scores, truth)
    if len(s) < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(s), len(s))
        v = metric(s[idx], t[idx])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


@dataclass(frozen=True)
class Split:
    """Indices of search and held-out candidates (disjoint, together all candidates)."""

    search: np.ndarray
    heldout: np.ndarray


def heldout_split(candidate_ids: Sequence[str], heldout_fraction: float = 0.5, seed: int = 0) -> Split:
    """Split candidates by a hash of (seed, id): stable under reordering and adding candidates."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    u = np.array([int(hashlib.sha256(f"{seed}:{cid}".encode()).hexdigest()[:12], 16) / 16**12 for cid in candidate_ids])
    heldout = np.flatnonzero(u < heldout_fraction)
    search = np.flatnonzero(u >= heldout_fraction)
    return Split(search=search, heldout=heldout)


def joint(values: Sequence[float], mode: str = "mean") -> float:
    """Combine per-target correlations into one fitness: their mean or their minimum (NaN if any is NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        return float("nan")
    if mode == "mean":
        return float(arr.mean())
    if mode == "min":
        return float(arr.min())
    raise ValueError(f"unknown joint mode {mode!r}; use 'mean' or 'min'")
