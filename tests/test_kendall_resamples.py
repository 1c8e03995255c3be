"""All-resamples-at-once Kendall tau-b equals scipy's, resample by resample, and the intervals are unchanged."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emq.fitness import bootstrap_interval, joint, kendall, paired_bootstrap_difference, spearman
from emq.kendall_resamples import kendall_of_resamples, resample_counts

# few distinct values, so resamples have ties; NaN and infinities where the metric must handle them
ALPHA = (1 - 0.95) / 2  # as emq.fitness computes it for level 0.95
values = st.sampled_from([0.0, 1.0, 2.0, 2.5, -3.0, np.inf, -np.inf, np.nan])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 12))
def test_each_resample_equals_the_per_resample_kendall(data, n):
    scores = np.array(data.draw(st.lists(values, min_size=n, max_size=n)))
    truth = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, 5.0, np.nan]), min_size=n, max_size=n)))
    draws = np.array(data.draw(st.lists(st.lists(st.integers(0, n - 1), min_size=n, max_size=n), min_size=1,
                                        max_size=6)))
    fast = kendall_of_resamples(scores, truth, resample_counts(n, draws))
    slow = np.array([kendall(scores[idx], truth[idx]) for idx in draws])
    np.testing.assert_array_equal(fast, slow)  # bit for bit, NaN where the metric is undefined


def test_counts_count_the_draws():
    counts = resample_counts(4, np.array([[0, 0, 3, 1], [2, 2, 2, 2]]))
    assert counts.tolist() == [[2, 1, 0, 1], [0, 0, 4, 0]]


def _slow_interval(s, t, n_boot, seed, metric=None):
    metric = metric or kendall
    rng = np.random.default_rng(seed)
    vals = [v for v in (metric(s[idx], t[idx]) for idx in (rng.integers(0, len(s), len(s)) for _ in range(n_boot)))
            if np.isfinite(v)]
    return float(np.quantile(vals, ALPHA)), float(np.quantile(vals, 1 - ALPHA))


def _slow_difference(a, b, cols, mode, n_boot, seed):
    def diff(idx):
        return joint([kendall(a[idx], c[idx]) for c in cols], mode) - joint([kendall(b[idx], c[idx]) for c in cols], mode)
    rng = np.random.default_rng(seed)
    vals = [v for v in (diff(rng.integers(0, len(a), len(a))) for _ in range(n_boot)) if np.isfinite(v)]
    return float(np.quantile(vals, ALPHA)), float(np.quantile(vals, 1 - ALPHA))


@pytest.mark.parametrize("mode", ["mean", "min"])
def test_intervals_are_those_of_the_per_resample_loop(mode):
    rng = np.random.default_rng(1)
    truth = rng.normal(size=60)
    a = truth + rng.normal(size=60)
    b = np.round(truth + 2 * rng.normal(size=60))  # ties
    second = truth + rng.normal(size=60)
    second[3] = np.nan  # missing ground truth is skipped per target
    assert bootstrap_interval(a, truth, n_boot=200, seed=4) == _slow_interval(a, truth, 200, 4)
    got = paired_bootstrap_difference(a, b, {"x": truth, "y": second}, mode=mode, n_boot=200, seed=4)
    assert (got.low, got.high) == _slow_difference(a, b, [truth, second], mode, 200, 4)


def test_other_metrics_and_large_sets_keep_the_per_resample_loop():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=300)
    scores = truth + rng.normal(size=300)
    assert bootstrap_interval(scores, truth, n_boot=30) == _slow_interval(scores, truth, 30, 0)
    low, high = bootstrap_interval(scores, truth, metric=spearman, n_boot=30)
    assert (low, high) == _slow_interval(scores, truth, 30, 0, spearman)
    assert 0.3 < low < spearman(scores, truth) < high < 0.9  # truth + equal noise: rho about 0.68
