"""The evaluator on cross-layer ops (one network-wide tensor before any reduction) and on rank aggregation."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from emq.evaluate import StackedStats, evaluate_pieces, evaluate_stacked, layer_groups
from emq.population import PopulationProgramError, split_population
from emq.proxy import Proxy
from emq.stats import NetworkStats
from search.pool import EvaluationPool

NASWOT = "mean_layers(logdet(sum_layers_t(act_codes_kernel)))"


def kernel_networks(n: int = 40, batch: int = 5, seed: int = 0) -> tuple[list[NetworkStats], np.ndarray]:
    """Networks with 2-4 ReLU entries carrying Hamming kernels (and conv entries with weights), and NASWOT's value."""
    g = torch.Generator().manual_seed(seed)
    nets, naswot = [], []
    for i in range(n):
        layers: dict[str, dict[str, torch.Tensor]] = {}
        total = torch.zeros(batch, batch, dtype=torch.float64)
        for k in range(2 + i % 3):
            codes = (torch.rand(batch, 30 + 5 * k, generator=g) > 0.5).double()
            kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T
            total += kernel
            layers[f"conv{k}"] = {"weight": torch.randn(4, 3, generator=g), "act_gram": torch.randn(batch, batch, generator=g)}
            layers[f"conv{k}.relu"] = {"act_codes_kernel": kernel.float()}
        nets.append(NetworkStats(layers, {f"conv{k}": 12 for k in range(2 + i % 3)}, {}))
        naswot.append(float(torch.linalg.slogdet(total)[1]))
    return nets, np.array(naswot)


@pytest.fixture(scope="module")
def networks():
    return kernel_networks()


def test_log_determinant_of_the_summed_kernels_is_naswot(networks):
    nets, naswot = networks
    scores, failures = evaluate_stacked(Proxy.from_formula(NASWOT), StackedStats(nets))
    assert not failures
    np.testing.assert_allclose(scores, naswot, rtol=1e-6)


def test_a_network_wide_value_is_the_same_in_every_layer(networks):
    nets, _ = networks
    scores, _ = evaluate_stacked(Proxy.from_formula("std_layers(logdet(sum_layers_t(act_codes_kernel)))"),
                                 StackedStats(nets))
    assert np.all(scores == 0.0)
    summed, _ = evaluate_stacked(Proxy.from_formula("sum_layers(logdet(sum_layers_t(act_codes_kernel)))"),
                                 StackedStats(nets))
    layers = np.array([sum("relu" in name for name in s.layers) for s in nets])
    np.testing.assert_allclose(summed, layers * evaluate_stacked(Proxy.from_formula(NASWOT), StackedStats(nets))[0],
                               rtol=1e-6)


def test_a_per_layer_value_can_be_combined_with_the_network_wide_one(networks):
    nets, _ = networks
    proxy = Proxy.from_formula("sum_layers(trace(div(act_codes_kernel, sum_layers_t(act_codes_kernel))))")
    scores, failures = evaluate_stacked(proxy, StackedStats(nets))
    # per input, each layer's share of the summed diagonal, added over the layers: the batch size (5)
    assert not failures
    np.testing.assert_allclose(scores, 5.0, rtol=1e-5)


def test_layers_of_different_shapes_fail_the_cross_layer_op_per_candidate():
    nets, _ = kernel_networks(8)
    odd = NetworkStats({**nets[0].layers, "extra.relu": {"act_codes_kernel": torch.eye(3)}}, nets[0].params, {})
    scores, failures = evaluate_stacked(Proxy.from_formula(NASWOT), StackedStats([odd] + nets[1:]))
    assert failures == Counter({"op_error:sum_layers_t": 1})
    assert np.isnan(scores[0]) and np.isfinite(scores[1:]).all()


def test_concatenated_rows_of_every_layer_are_counted_once(networks):
    nets, _ = networks
    scores, _ = evaluate_stacked(Proxy.from_formula("mean_layers(count_unique_rows(concat_layers_t(act_codes_kernel)))"),
                                 StackedStats(nets))
    expected = [torch.unique(torch.cat([d["act_codes_kernel"] for d in s.layers.values() if "act_codes_kernel" in d]),
                             dim=0).shape[0] for s in nets]
    np.testing.assert_array_equal(scores, expected)


def test_evaluation_never_modifies_the_statistics(networks):
    nets, _ = networks
    before = [{k: {s: t.clone() for s, t in d.items()} for k, d in n.layers.items()} for n in nets]
    evaluate_stacked(Proxy.from_formula("sum_layers(l2(sub(act_gram, mean_layers_t(act_gram))))"), StackedStats(nets))
    evaluate_stacked(Proxy.from_formula(NASWOT), StackedStats(nets))
    for net, copy in zip(nets, before):
        for k, d in net.layers.items():
            assert all(torch.equal(t, copy[k][s]) for s, t in d.items())


# ------------------------------------------------------------------ rank aggregation

RANKED = f"n_rank_add({NASWOT}, sum_layers(numel(weight)))"


def test_rank_aggregation_joins_parts_that_read_different_entries(networks):
    nets, naswot = networks
    scores, failures = evaluate_stacked(Proxy.from_formula(RANKED), StackedStats(nets))
    size = np.array([sum(12 for name in s.layers if "relu" not in name) for s in nets], dtype=float)
    from scipy.stats import rankdata
    expected = np.log(rankdata(naswot) / len(nets)) + np.log(rankdata(size) / len(nets))
    assert not failures
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_a_ranked_program_splits_into_its_parts():
    split = split_population(Proxy.from_formula(f"n_neg(n_rank_log(n_add({NASWOT}, n_rank_log({NASWOT}))))").root)
    assert [p.formula() for p in split.parts] == [NASWOT]
    assert [n.name for n in split.stage] == ["n_rank_log", "n_add", "n_rank_log", "n_neg"]


def test_ranks_are_taken_over_every_piece_and_every_shard_not_within_one(networks):
    nets, _ = networks
    proxy = Proxy.from_formula(RANKED)
    whole, _ = evaluate_stacked(proxy, StackedStats(nets))
    pieces = [(0, StackedStats(nets[:13], block=32)), (13, StackedStats(nets[13:], block=32))]
    by_pieces, failures = evaluate_pieces([proxy, Proxy.from_formula(NASWOT)], pieces, len(nets))
    np.testing.assert_allclose(by_pieces[0], whole, rtol=1e-6)
    with EvaluationPool("threading", n_jobs=2, block=8) as pool:
        (pooled, pool_failures), _ = pool.score(pool.attach(nets), [proxy, Proxy.from_formula(NASWOT)])
    np.testing.assert_allclose(pooled, whole, rtol=1e-6)
    assert not pool_failures and not failures[0]


def test_a_network_alone_has_no_rank(networks):
    nets, _ = networks
    with pytest.raises(PopulationProgramError, match="ranks each network"):
        Proxy.from_formula(RANKED).evaluate(nets[0])
    with pytest.raises(PopulationProgramError):
        layer_groups(Proxy.from_formula(RANKED), StackedStats(nets))


def test_a_part_that_fails_fails_the_candidate_with_its_reason():
    nets, _ = kernel_networks(8)
    odd = NetworkStats({**nets[0].layers, "extra.relu": {"act_codes_kernel": torch.eye(3)}}, nets[0].params, {})
    scores, failures = evaluate_stacked(Proxy.from_formula(RANKED), StackedStats([odd] + nets[1:]))
    assert failures == Counter({"op_error:sum_layers_t": 1})
    assert np.isnan(scores[0]) and np.isfinite(scores[1:]).all()


@pytest.mark.parametrize("formula", [
    "sum_layers(l2(add(act_codes_kernel, concat_layers_t(act_codes_kernel))))",  # network-wide shapes differ
    "sum_layers(trace(gram(mul(act_gram, mean_layers_t(act_gram)))))",
    "n_add(mean_layers(eig_max(sum_layers_t(gram(sum_layers_t(act_gram))))), sum_layers(l2(weight)))",
    "mean_layers(s_add(logdet(sum_layers_t(act_gram)), l2(sub(act_gram, sum_layers_t(act_gram)))))",
])
def test_staged_evaluation_equals_the_per_network_definition(formula, networks):
    from test_search_fast_eval import reference_scores

    nets, _ = networks
    proxy = Proxy.from_formula(formula)
    expected, expected_fail = reference_scores(proxy, nets)
    got, fail = evaluate_stacked(proxy, StackedStats(nets))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    assert fail == expected_fail


def test_a_lone_candidate_column_keeps_its_candidate_axis_beside_a_shared_scalar():
    """Seed 1 of the 10,000-program NB201 run crashed here: a layer whose statistics come in two dtypes is split
    into columns, one of a single network; there a network-wide scalar plus a per-layer scalar shared by every
    network (`params`) lost its candidate axis, and the next op failed to stack it."""
    def net(i: int) -> NetworkStats:
        dtype = torch.bfloat16 if i == 4 else torch.float16  # the cache stores each tensor in the dtype that fits it
        layers = {f"conv{k}": {"grad": torch.randn(4, 3).to(dtype), "params": torch.tensor(12.0),
                               "flops": torch.tensor(100.0 * (k + 1))} for k in range(3)}
        return NetworkStats(layers, {f"conv{k}": 12 for k in range(3)}, {})

    nets = [net(i) for i in range(5)]
    proxy = Proxy.from_formula("sum_layers(s_add(numel(add(sum_layers_t(flops), params)), l1(add(sum_layers_t(flops), params))))")
    scores, failures = evaluate_stacked(proxy, StackedStats(nets))
    assert not failures
    np.testing.assert_allclose(scores, 3 * (1 + 600 + 12), rtol=1e-6)
