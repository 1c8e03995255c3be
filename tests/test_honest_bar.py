"""The honest bar: partialled fitness, best-trivial choice, paired bootstrap and verdict, trivial-equivalent screens."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emq.bench.base import arch_features
from emq.degeneracy import hyperparameter_function, trivial_match
from emq.fitness import (
    DISCOVERY, NO_DISCOVERY, PairedDifference, choose_best_trivial, kendall, paired_bootstrap_difference,
    partial_correlation, spearman, verdict,
)


def test_partial_kendall_of_the_control_itself_is_zero():
    rng = np.random.default_rng(0)
    z = rng.normal(size=200)
    y = z + rng.normal(size=200)
    assert partial_correlation(kendall, z, y, z) == 0.0
    assert partial_correlation(kendall, 3 * z + 1, y, z) == 0.0  # a monotone disguise adds nothing either


def test_partial_kendall_rewards_information_beyond_the_control():
    # y = z + w: a program that reads w (independent of z) ranks y beyond z; a noisy copy of z does not.
    rng = np.random.default_rng(1)
    z, w = rng.normal(size=(2, 400))
    y = z + w
    assert partial_correlation(kendall, w, y, z) > 0.4
    assert abs(partial_correlation(kendall, z + 0.1 * rng.normal(size=400), y, z)) < 0.1
    assert kendall(z + 0.1 * rng.normal(size=400), y) > kendall(w, y) - 0.2  # plain Kendall cannot tell them apart


def _pair_tau(a, b) -> float:
    """Kendall's tau-a by counting pairs (no ties in these examples): an independent check of the scipy path."""
    n = len(a)
    signs = [np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i in range(n) for j in range(i + 1, n)]
    return float(np.sum(signs)) / len(signs)


@pytest.mark.parametrize("x, y, z, expected", [
    # tau(x,y) = 2/3, tau(x,z) = 1/3, tau(y,z) = 0: (2/3) / sqrt(8/9) = 1/sqrt(2)
    ([1, 2, 3, 4], [1, 3, 2, 4], [2, 1, 4, 3], 1 / np.sqrt(2)),
    # tau(x,y) = 0.6, tau(x,z) = 0.8, tau(y,z) = 0.4: (0.6 - 0.32) / sqrt(0.36 * 0.84)
    ([1, 2, 3, 4, 5], [2, 1, 3, 5, 4], [1, 3, 2, 4, 5], (0.6 - 0.32) / np.sqrt(0.36 * 0.84)),
])
def test_partial_kendall_equals_the_formula_on_hand_counted_examples(x, y, z, expected):
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    r_xy, r_xz, r_yz = _pair_tau(x, y), _pair_tau(x, z), _pair_tau(y, z)
    assert (r_xy - r_xz * r_yz) / np.sqrt((1 - r_xz**2) * (1 - r_yz**2)) == pytest.approx(expected)
    assert partial_correlation(kendall, x, y, z) == pytest.approx(expected)
    assert partial_correlation(kendall, x, y, z) != pytest.approx(kendall(x, y))  # the control changed it


def test_partial_correlation_without_a_usable_control_is_the_plain_one():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 50))
    assert partial_correlation(spearman, x, y, np.ones(50)) == spearman(x, y)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=5, max_size=30), st.integers(0, 2**16))
def test_partial_kendall_stays_within_minus_one_and_one(values, seed):
    rng = np.random.default_rng(seed)
    x = np.asarray(values)
    y, z = rng.normal(size=(2, len(x)))
    r = partial_correlation(kendall, x, y, z)
    assert np.isnan(r) or -1.0 - 1e-9 <= r <= 1.0 + 1e-9


def test_best_trivial_is_chosen_in_its_better_direction_and_per_target():
    rng = np.random.default_rng(3)
    size = rng.normal(size=100)
    depth = rng.normal(size=100)
    truth = {"a": -size + 0.1 * rng.normal(size=100), "b": depth}
    choices = choose_best_trivial({"params": size, "arch:depth": depth}, truth)
    assert choices["a"].label == "-params" and choices["a"].sign == -1
    assert choices["b"].name == "arch:depth" and choices["b"].search_value == pytest.approx(1.0)
    assert kendall(choices["a"].oriented(size), truth["a"]) > 0


def test_paired_interval_excludes_zero_only_for_a_real_gain():
    rng = np.random.default_rng(4)
    truth = rng.normal(size=300)
    trivial = truth + rng.normal(scale=1.0, size=300)
    better = truth + rng.normal(scale=0.2, size=300)
    same = trivial + rng.normal(scale=1e-3, size=300)
    gain = paired_bootstrap_difference(better, trivial, {"t": truth}, n_boot=300)
    tie = paired_bootstrap_difference(same, trivial, {"t": truth}, n_boot=300)
    assert gain.low > 0 and gain.excludes_zero
    assert tie.low < 0 < tie.high and not tie.excludes_zero


def test_verdict_needs_the_median_run_to_clear_zero():
    up, down = PairedDifference(0.1, 0.05, 0.15, 100), PairedDifference(0.02, -0.01, 0.05, 100)
    assert verdict([up] * 4 + [down] * 2) == DISCOVERY
    assert verdict([up] * 2 + [down] * 4) == NO_DISCOVERY
    assert verdict([]) == NO_DISCOVERY


def test_scores_constant_within_width_groups_are_a_function_of_width():
    # The old vit-digits winner: three values, one per embedding width.
    width = np.repeat([32.0, 48.0, 64.0], 10)
    depth = np.tile([2.0, 3.0, 4.0, 5.0, 2.0], 6)
    scores = width * 0.01 + 7
    assert hyperparameter_function(scores, {"arch:depth": depth, "arch:hidden_dim": width}) == "arch:hidden_dim"
    noisy = scores + np.random.default_rng(5).normal(scale=0.2, size=30)
    assert hyperparameter_function(noisy, {"arch:hidden_dim": width}) is None
    assert hyperparameter_function(noisy, {"arch:unique": np.arange(30.0)}) is None  # groups of one prove nothing


def test_trivial_match_names_the_predictor_and_ignores_constant_ones():
    rng = np.random.default_rng(6)
    x = rng.normal(size=40)
    assert trivial_match(np.exp(x), {"flops": np.ones(40), "params": x}) == "params"
    assert trivial_match(np.exp(x), {"params": x}, limit=1.0) is None
    assert trivial_match(rng.normal(size=40), {"params": x}) is None


def test_arch_features_read_scalars_and_per_layer_lists():
    feats = arch_features({"hidden_dim": 64, "depth": 3, "mlp_ratio": [1.0, 2.0, 3.0], "name": "x", "flag": True})
    assert feats == {"hidden_dim": 64.0, "depth": 3.0, "mlp_ratio_mean": 2.0, "mlp_ratio_sum": 6.0}
    assert arch_features(None) == {}


def test_default_fitness_pays_a_complement_that_ranks_backwards_nothing_positive():
    # -z + w: anti-correlated with y = z + w alone, yet its residual after z is w. The partial value
    # rewards it; the default (min of plain and partial) does not.
    from emq.fitness import beyond_trivial

    rng = np.random.default_rng(7)
    z, w = rng.normal(size=(2, 300))
    y = 2 * z + w
    complement = -z + 0.5 * w
    assert partial_correlation(kendall, complement, y, z) > 0.1
    assert beyond_trivial(kendall, complement, y, z) < 0
    proxy = y + 0.3 * rng.normal(size=300)  # good alone and beyond z
    assert beyond_trivial(kendall, proxy, y, z) > 0.3
    assert beyond_trivial(kendall, z, y, z) == 0.0
