"""Screens for degenerate proxies: non-finite, constant, blind to the input, or a trivial predictor in disguise.

The published EMQ proxy was input-independent (a disguised size count), and an
earlier winner of ours was the embedding width in disguise; these checks make that
visible for any program, discovered or hand-written.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from emq.fitness import kendall

NONFINITE = "nonfinite"
CONSTANT = "constant"
INPUT_INDEPENDENT = "input_independent"
TRIVIAL_EQUIVALENT = "trivial_equivalent"


#: Largest share of +-inf scores a usable proxy may have (at least one score is always allowed). Infinite
#: scores rank at the ends (NASWOT's log|det K| is -inf for a singular kernel, on 3 of 1,000 NB201 cells);
#: a proxy infinite on more than this share ranks too many candidates by ties. NaN is never usable.
MAX_INF_SHARE = 0.02


def allowed_infinities(n: int) -> int:
    """Return how many of `n` scores may be +-inf (MAX_INF_SHARE of them, at least one)."""
    return max(1, int(MAX_INF_SHARE * n))


def score_flags(scores: np.ndarray, rtol: float = 1e-9) -> list[str]:
    """Return the degeneracy reasons visible from one set of scores ([] when healthy).

    `nonfinite`: a NaN score, or more +-inf scores than `allowed_infinities`;
    `constant`: the scores do not separate the candidates.
    """
    scores = np.asarray(scores, dtype=np.float64)
    infinite = np.isinf(scores)
    if np.isnan(scores).any() or int(infinite.sum()) > allowed_infinities(scores.size):
        return [NONFINITE]
    finite = scores[~infinite]
    flat = finite.size == 0 or np.ptp(finite) <= rtol * max(float(np.max(np.abs(finite))), 1e-300)
    levels = (min(finite.size, 1) if flat else 2) + np.unique(scores[infinite]).size  # distinct ranks, capped at 2
    return [CONSTANT] if levels < 2 else []


def trivial_match(scores: np.ndarray, trivial: Mapping[str, np.ndarray], limit: float = 0.95) -> str | None:
    """Return the first trivial predictor (by name) whose ranking the scores match (|Kendall tau| >= `limit`), else None.

    A program that ranks the probe like #params, a bit count or the quantized loss
    cannot beat that predictor by much and costs more: it is that predictor in
    disguise, even when its values move with the batch. Predictors that do not vary
    on these candidates never match, nor does anything on fewer than 3 candidates
    (tau is undefined there: `emq.fitness.kendall`). `limit` >= 1 disables the check.
    """
    if limit >= 1.0:
        return None
    x = np.asarray(scores, dtype=np.float64)
    for name in sorted(trivial):
        values = np.asarray(trivial[name], dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.ptp(values) == 0:
            continue
        tau = kendall(x, values)
        if np.isfinite(tau) and abs(tau) >= limit:
            return name
    return None


def hyperparameter_function(scores: np.ndarray, features: Mapping[str, np.ndarray], limit: float = 0.99,
                            min_group: int = 3) -> str | None:
    """Return the architecture hyperparameter of which the scores are (nearly) a function, else None.

    For each hyperparameter, candidates sharing its value form a group; the share of
    the scores' rank variance explained by the groups (eta squared) at or above
    `limit` means the program reads off that setting (e.g. one value per embedding
    width). Hyperparameters with fewer than `min_group` candidates per value on
    average are skipped: with groups of one, anything is "a function" of them.
    """
    if limit >= 1.0 + 1e-12:
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    total = float(np.sum((ranks - ranks.mean()) ** 2))
    if total == 0:
        return None
    for name in sorted(features):
        values = np.asarray(features[name], dtype=np.float64)
        groups = np.unique(values)
        if len(groups) < 2 or len(groups) * min_group > len(values):
            continue
        within = sum(float(np.sum((ranks[values == g] - ranks[values == g].mean()) ** 2)) for g in groups)
        if 1.0 - within / total >= limit:
            return name
    return None


def is_input_independent(scores: np.ndarray, scores_other_batch: np.ndarray, rtol: float = 1e-6) -> bool:
    """True when changing the batch (or init seed) leaves every score unchanged within `rtol`."""
    a = np.asarray(scores, dtype=np.float64)
    b = np.asarray(scores_other_batch, dtype=np.float64)
    return bool(np.allclose(a, b, rtol=rtol, atol=0.0, equal_nan=True))


def degeneracy_flags(scores: np.ndarray, scores_other_batch: np.ndarray | None = None) -> list[str]:
    """Return every degeneracy reason for a proxy's scores (and, if given, its scores on a second batch)."""
    flags = score_flags(scores)
    if scores_other_batch is not None and not flags and is_input_independent(scores, scores_other_batch):
        flags.append(INPUT_INDEPENDENT)
    return flags
