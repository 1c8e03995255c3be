"""Rank correlations, bootstrap intervals, held-out split, joint fitness, degeneracy screens."""
from __future__ import annotations

import numpy as np
import pytest

from emq.degeneracy import CONSTANT, INPUT_INDEPENDENT, NONFINITE, degeneracy_flags
from emq.fitness import bootstrap_interval, heldout_split, joint, kendall, pearson, spearman


def test_perfect_and_reversed_rankings():
    t = np.arange(10.0)
    assert kendall(t, t) == pytest.approx(1.0)
    assert spearman(-t, t) == pytest.approx(-1.0)
    assert pearson(2 * t + 1, t) == pytest.approx(1.0)


def test_constant_or_failed_scores_have_undefined_correlation_and_infinities_are_ranked():
    t = np.arange(10.0)
    assert np.isnan(kendall(np.ones(10), t))
    s = t.copy()
    s[3] = np.nan  # a failed score: undefined
    assert np.isnan(spearman(s, t))
    s[3] = np.inf  # a rank statistic ranks +inf first (NASWOT's -inf on a singular kernel: last)
    assert spearman(s, t) == pytest.approx(spearman(np.where(np.isinf(s), 100.0, s), t))
    assert kendall(np.where(t < 1, -np.inf, t), t) == pytest.approx(1.0)
    assert np.isnan(kendall(np.full(10, -np.inf), t))


def test_missing_ground_truth_rows_are_skipped():
    t = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    s = np.array([1.0, 2.0, -100.0, 4.0, 5.0])
    assert kendall(s, t) == pytest.approx(1.0)


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    t = rng.normal(size=60)
    s = t + rng.normal(scale=1.0, size=60)
    lo, hi = bootstrap_interval(s, t, kendall, n_boot=300, seed=3)
    assert lo <= kendall(s, t) <= hi
    assert (lo, hi) == bootstrap_interval(s, t, kendall, n_boot=300, seed=3)


def test_heldout_split_is_disjoint_complete_and_stable_under_reordering():
    ids = [f"cand-{i}" for i in range(200)]
    split = heldout_split(ids, 0.3, seed=0)
    assert set(split.search).isdisjoint(split.heldout)
    assert len(split.search) + len(split.heldout) == 200
    assert 30 < len(split.heldout) < 90
    reordered = ids[::-1]
    split2 = heldout_split(reordered, 0.3, seed=0)
    assert {ids[i] for i in split.heldout} == {reordered[i] for i in split2.heldout}
    assert {ids[i] for i in heldout_split(ids, 0.3, seed=1).heldout} != {ids[i] for i in split.heldout}


def test_joint_fitness_mean_and_min():
    assert joint([0.2, 0.6]) == pytest.approx(0.4)
    assert joint([0.2, 0.6], "min") == pytest.approx(0.2)
    assert np.isnan(joint([0.2, float("nan")]))
    with pytest.raises(ValueError, match="joint mode"):
        joint([0.1], "max")


def test_degeneracy_flags_name_the_reason():
    assert degeneracy_flags(np.array([1.0, np.nan, 2.0])) == [NONFINITE]
    assert degeneracy_flags(np.full(5, 3.0)) == [CONSTANT]
    s = np.array([1.0, 2.0, 3.0])
    assert degeneracy_flags(s, s.copy()) == [INPUT_INDEPENDENT]
    assert degeneracy_flags(s, s + 0.5) == []


def test_partial_kendall_removes_what_a_shared_size_term_explains():
    from emq.fitness import partial_kendall

    rng = np.random.default_rng(0)
    size = rng.normal(size=400)
    truth = size + 0.5 * rng.normal(size=400)
    proxy_size_only = size + 0.01 * rng.normal(size=400)
    signal = truth - size
    proxy_with_signal = size + signal + 0.3 * rng.normal(size=400)
    # A disguised size count keeps little beyond size; one with signal keeps much more.
    assert kendall(proxy_size_only, truth) > 0.5 and abs(partial_kendall(proxy_size_only, truth, size)) < 0.15
    assert partial_kendall(proxy_with_signal, truth, size) > 0.4
    # An unrelated `given` leaves Kendall nearly as it is; a `given` that ranks the truth perfectly leaves nothing.
    unrelated = rng.normal(size=400)
    assert abs(partial_kendall(proxy_with_signal, truth, unrelated) - kendall(proxy_with_signal, truth)) < 0.05
    assert np.isnan(partial_kendall(proxy_with_signal, truth, truth))
    # NaN truth is skipped in all three taus alike.
    gappy = truth.copy()
    gappy[:10] = np.nan
    assert partial_kendall(proxy_with_signal, gappy, size) == pytest.approx(
        partial_kendall(proxy_with_signal[10:], truth[10:], size[10:]))
