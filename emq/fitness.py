"""Rank agreement between proxy scores and ground truth: Kendall, Spearman, Pearson, intervals, splits."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

from emq.kendall_resamples import MAX_PAIRWISE_N, kendall_of_resamples, resample_counts

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
    if len(s) < 3 or np.isnan(s).any() or np.unique(s).size < 2 or np.ptp(t) == 0:
        return float("nan")  # undefined: too few points, a failed (NaN) score, or constant scores
    # Rank statistics: -inf / +inf rank at the ends (NASWOT's log|det K| is -inf for a singular
    # kernel, as on NAS-Bench-201's degenerate cells, which it thereby ranks last).
    return float(fn(s, t)[0])


def kendall(scores: np.ndarray, truth: np.ndarray) -> float:
    """Return Kendall's tau-b (NaN when undefined: constant scores, or a NaN score; infinite scores are ranked).

    EMQ's one Kendall: fitness, the trivial-predictor screen, the benchmarks' READMEs
    and the apply comparisons all call it. Candidates with NaN ground truth are
    skipped; fewer than 3 left, or constant truth, is undefined (NaN) too.
    """
    return _correlation(sps.kendalltau, scores, truth)


def partial_kendall(scores: np.ndarray, truth: np.ndarray, given: np.ndarray) -> float:
    """Return Kendall's partial tau of `scores` and `truth` given `given` (e.g. FLOPs): what a proxy ranks beyond size.

    tau_xy.z = (tau_xy - tau_xz tau_yz) / sqrt((1 - tau_xz^2)(1 - tau_yz^2)); NaN when a
    tau is undefined or `given` ranks either perfectly. Candidates with NaN truth are skipped.
    """
    keep = np.isfinite(np.asarray(truth, dtype=np.float64))
    scores, truth, given = (np.asarray(a, dtype=np.float64)[keep] for a in (scores, truth, given))
    xy, xz, yz = kendall(scores, truth), kendall(scores, given), kendall(truth, given)
    denominator = (1 - xz * xz) * (1 - yz * yz)
    return float((xy - xz * yz) / np.sqrt(denominator)) if denominator > 0 else math.nan


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


def _draws(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Return the (n_boot, n) bootstrap draws of `seed`, row by row as the per-resample loop drew them."""
    rng = np.random.default_rng(seed)
    return np.array([rng.integers(0, n, n) for _ in range(n_boot)], dtype=np.int64).reshape(n_boot, n)


def _all_at_once(metric: Metric, n: int) -> bool:
    """Whether bootstrap resamples of `n` candidates are scored together (emq.kendall_resamples: same values)."""
    return metric is kendall and n <= MAX_PAIRWISE_N


def bootstrap_interval(
    scores: np.ndarray, truth: np.ndarray, metric: Metric = kendall, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Return the percentile bootstrap interval of `metric` over candidates (resampled with replacement)."""
    s, t = _valid(scores, truth)
    if len(s) < 3:
        return float("nan"), float("nan")
    draws = _draws(len(s), n_boot, seed)
    if _all_at_once(metric, len(s)):
        taus = kendall_of_resamples(s, t, resample_counts(len(s), draws))
        values = taus[np.isfinite(taus)].tolist()
    else:
        values = [v for v in (metric(s[idx], t[idx]) for idx in draws) if np.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


@dataclass(frozen=True)
class Split:
    """Indices of search and held-out candidates (disjoint, together all candidates)."""

    search: np.ndarray
    heldout: np.ndarray

    def cut(self, max_search: int | None = None, max_heldout: int | None = None) -> "Split":
        """Return the first `max_search` / `max_heldout` of each half (None or 0: all of it).

        With the "hash" order the first N of either half are a uniform sample, so a cut
        is the explicit memory and time bound of a run, not a biased subset.
        """
        return Split(search=self.search[:max_search] if max_search else self.search,
                     heldout=self.heldout[:max_heldout] if max_heldout else self.heldout)


#: How each half of a split is ordered: "hash" (by the split hash, so the first N of either half are a uniform
#: sample) or "index" (candidate order: the engine's order before emq 0.x; NB201's lexicographic cells made its
#: first N all share edge 0->1, so only old run folders, which record no order, read it).
SPLIT_ORDERS = ("hash", "index")


def heldout_split(candidate_ids: Sequence[str], heldout_fraction: float = 0.5, seed: int = 0,
                  order: str = "hash") -> Split:
    """Split candidates by a hash of (seed, id): stable under reordering and adding candidates.

    With `order` "hash" each half lists its candidates by that hash, a seeded random
    permutation, so `split.search[:n]` and `split.heldout[:n]` are uniform samples.
    """
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if order not in SPLIT_ORDERS:
        raise ValueError(f"split order must be one of {', '.join(SPLIT_ORDERS)}, got {order!r}")
    u = np.array([int(hashlib.sha256(f"{seed}:{cid}".encode()).hexdigest()[:12], 16) / 16**12 for cid in candidate_ids])
    ranked = np.argsort(u, kind="stable") if order == "hash" else np.arange(len(u))
    heldout = ranked[u[ranked] < heldout_fraction]
    search = ranked[u[ranked] >= heldout_fraction]
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


def partial_correlation(metric: Metric, scores: np.ndarray, truth: np.ndarray, control: np.ndarray) -> float:
    """Return `metric` between scores and truth with `control` partialled out (Kendall 1942's partial tau form).

    r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)). It is 0 for a program
    that ranks exactly like the control (it adds no information), positive for one that
    ranks the truth where the control does not. A control that is undefined on these
    candidates (constant, NaN) controls for nothing: the plain correlation is returned.
    """
    r_xy = metric(scores, truth)
    r_xz = metric(scores, control)
    r_yz = metric(control, truth)
    if not np.isfinite(r_xy):
        return float("nan")
    if not (np.isfinite(r_xz) and np.isfinite(r_yz)):
        return r_xy
    denom = (1.0 - r_xz**2) * (1.0 - r_yz**2)
    if denom <= 1e-12:
        return 0.0  # the program (or the truth) is the control in disguise: nothing beyond it
    return float((r_xy - r_xz * r_yz) / np.sqrt(denom))


def beyond_trivial(metric: Metric, scores: np.ndarray, truth: np.ndarray, control: np.ndarray) -> float:
    """Return min(plain, partial) correlation: what a program adds beyond `control`, capped by how it ranks alone.

    The partial correlation alone rewards complements, not proxies: on vit-digits a
    search under it found programs ranking *against* the truth (Kendall -0.63) whose
    residual after removing the embedding width still carried signal. The minimum
    pays a program only if it ranks well on its own and adds to the control; a
    disguised control scores 0, a backwards ranker its (negative) plain value.
    """
    plain = metric(scores, truth)
    partial = partial_correlation(metric, scores, truth, control)
    if not (np.isfinite(plain) and np.isfinite(partial)):
        return float("nan")
    return float(min(plain, partial))


@dataclass(frozen=True)
class PairedDifference:
    """metric(a) - metric(b) on the same candidates, with a paired percentile bootstrap interval."""

    value: float
    low: float
    high: float
    n_boot: int

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.low) and (self.low > 0 or self.high < 0))

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "n_boot": self.n_boot}


def paired_bootstrap_difference(
    a: np.ndarray, b: Mapping[str, np.ndarray] | np.ndarray, truth: Mapping[str, np.ndarray], metric: Metric = kendall,
    mode: str = "mean", n_boot: int = 1000, seed: int = 0, level: float = 0.95,
) -> PairedDifference:
    """Return joint(metric(a, truth_t)) - joint(metric(b_t, truth_t)) over targets t, with a paired bootstrap CI.

    `b` is one score array or one per target (the best trivial predictor may differ by
    column). Each resample draws the same candidates for both scorers and every target,
    so the interval is of the difference itself, not of two separate estimates.
    """
    a = np.asarray(a, dtype=np.float64)
    targets = list(truth)
    b_by = {t: np.asarray(b[t] if isinstance(b, Mapping) else b, dtype=np.float64) for t in targets}
    cols = {t: np.asarray(truth[t], dtype=np.float64) for t in targets}

    def diff(idx: np.ndarray | slice) -> float:
        return joint([metric(a[idx], cols[t][idx]) for t in targets], mode) - \
            joint([metric(b_by[t][idx], cols[t][idx]) for t in targets], mode)

    value = diff(slice(None))
    n = len(a)
    draws = _draws(n, n_boot, seed)
    if _all_at_once(metric, n):
        counts = resample_counts(n, draws)
        a_taus = np.stack([kendall_of_resamples(a, cols[t], counts) for t in targets], axis=1)
        b_taus = np.stack([kendall_of_resamples(b_by[t], cols[t], counts) for t in targets], axis=1)
        diffs = [joint(ra, mode) - joint(rb, mode) for ra, rb in zip(a_taus, b_taus)]
        values = [v for v in diffs if np.isfinite(v)]
    else:
        values = [v for v in (diff(idx) for idx in draws) if np.isfinite(v)]
    if not values or not np.isfinite(value):
        return PairedDifference(value, float("nan"), float("nan"), n_boot)
    alpha = (1 - level) / 2
    return PairedDifference(value, float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)), n_boot)


DISCOVERY = "discovery"
NO_DISCOVERY = "no discovery"


def verdict(differences: Sequence[PairedDifference]) -> str:
    """Return "discovery" when, in the median over runs, the paired interval lies above 0; else "no discovery".

    Each run contributes the lower end of its 95% interval of held-out
    metric(program) - metric(best trivial); the median of those must be > 0, so at
    least half of the runs (seeds x batch seeds) must each show a significant gain.
    """
    lows = [d.low for d in differences]
    if not lows or not all(np.isfinite(lows)):
        return NO_DISCOVERY
    return DISCOVERY if float(np.median(lows)) > 0 else NO_DISCOVERY


@dataclass(frozen=True)
class TrivialChoice:
    """The trivial predictor that ranks one target best on the search split, in its better direction."""

    target: str
    name: str
    sign: int  # +1: higher value predicts higher accuracy; -1: the negated predictor is the better one
    search_value: float

    @property
    def label(self) -> str:
        return self.name if self.sign > 0 else f"-{self.name}"

    def oriented(self, values: np.ndarray) -> np.ndarray:
        """Return the predictor's values in its chosen direction."""
        return self.sign * np.asarray(values, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "name": self.name, "sign": self.sign, "label": self.label,
                "search_value": self.search_value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrivialChoice":
        """Return the choice `to_json` recorded (hall_of_fame.json and score tables keep it per target)."""
        return cls(data["target"], data["name"], int(data["sign"]), float(data["search_value"]))


def choose_best_trivial(trivial: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                        metric: Metric = kendall) -> dict[str, TrivialChoice]:
    """Return, per target, the trivial predictor (either sign) with the highest `metric` on these candidates.

    Call it on the search split only: the choice is part of the search, and the
    held-out comparison then measures the chosen predictor on candidates it never saw.
    Predictors undefined on these candidates (constant, NaN) are skipped; ties go to
    the alphabetically first name, so the choice is deterministic.
    """
    out: dict[str, TrivialChoice] = {}
    for target, column in truth.items():
        best: TrivialChoice | None = None
        for name in sorted(trivial):
            value = metric(trivial[name], column)
            if not np.isfinite(value):
                continue
            choice = TrivialChoice(target, name, 1 if value >= 0 else -1, abs(float(value)))
            if best is None or choice.search_value > best.search_value:
                best = choice
        if best is not None:
            out[target] = best
    return out
