"""Screens for degenerate proxies: non-finite, constant across candidates, or blind to the input.

The published EMQ proxy was input-independent (a disguised size count); these checks
make that visible for any program, discovered or hand-written.
"""
from __future__ import annotations

import numpy as np

NONFINITE = "nonfinite"
CONSTANT = "constant"
INPUT_INDEPENDENT = "input_independent"
SIZE_EQUIVALENT = "size_equivalent"


def score_flags(scores: np.ndarray, rtol: float = 1e-9) -> list[str]:
    """Return the degeneracy reasons visible from one set of scores ([] when healthy)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        return [NONFINITE]
    scale = max(float(np.max(np.abs(scores))), 1e-300)
    if np.ptp(scores) <= rtol * scale:
        return [CONSTANT]
    return []


def is_size_equivalent(scores: np.ndarray, sizes: np.ndarray | None, limit: float = 0.95) -> bool:
    """True when the scores rank the networks like their parameter counts (|Kendall tau| >= `limit`).

    A program that passes the input-independence check by a hair (its value moves with
    the batch, its ranking does not) is still a size count; it cannot beat #params.
    Sizes that do not vary (one network, many bit configurations) never flag.
    """
    if sizes is None or limit >= 1.0:
        return False
    from scipy.stats import kendalltau

    sizes = np.asarray(sizes, dtype=np.float64)
    if np.ptp(sizes) == 0:
        return False
    tau = kendalltau(np.asarray(scores, dtype=np.float64), sizes).statistic
    return bool(np.isfinite(tau) and abs(tau) >= limit)


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
