"""Specification of the per-(layer, bits) statistics, the separable baselines, `is_separable` and `--separable`."""
from __future__ import annotations

import functools
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import emq.stats.cache as stats_cache
from emq.baselines import baseline_scores, get_baseline, list_baselines, trivial_baselines
from emq.bench.mq_digits import MQDigitsBenchmark
from emq.proxy import Proxy
from emq.quant.fake_quant import quantize_weight, quantized_model
from emq.quant.layers import quantizable_layers
from emq.separable import is_separable, why_not_separable
from emq.stats import LAYER_BITS_STATS, STATS
from emq.stats.config import StatsConfig
from emq.stats.layer_bits import LayerBitsTable, compute_layer_bits_table
from search.config import SearchConfig
from search.run_folder import RunFolder
from search.generate import Grammar, GrowConfig, random_program, separable_op_weights
from search.operators import Limits, crossover, mutate, program

CHOICES = (2, 8)
#: Few Hutchinson samples: the tests check the table's bookkeeping, not the traces' convergence.
SAMPLES = 2


class TinyMQ(MQDigitsBenchmark):
    """mq-digits cut to its first 48 configurations (the table does not depend on how many there are)."""

    def candidates(self):
        return super().candidates()[:48]

    def ground_truth(self):
        return {k: v[:48] for k, v in super().ground_truth().items()}


@pytest.fixture(scope="module")
def bench():
    torch.set_num_threads(1)
    return MQDigitsBenchmark()


@pytest.fixture(scope="module")
def table(bench) -> LayerBitsTable:
    model = bench.build_model(bench.candidates()[0])
    return compute_layer_bits_table(model, CHOICES, bench.batch(0, 16), evaluation=bench.calibration_batch(),
                                    act_bits=bench.act_bits, calib_inputs=bench.calibration_inputs(),
                                    trace_samples=SAMPLES)


@pytest.fixture
def fast_tables(monkeypatch):
    """Cached tables computed with few trace samples (HAWQ-v2's 128 cost most of the table's 17 s on one core)."""
    monkeypatch.setattr(stats_cache, "compute_layer_bits_table",
                        functools.partial(compute_layer_bits_table, trace_samples=SAMPLES))


# ------------------------------------------------------------------------------------------------ the table
def test_table_has_one_entry_per_layer_and_bit_choice(table, bench):
    layers = list(quantizable_layers(bench.build_model(bench.candidates()[0])))
    assert table.layers == tuple(layers) and table.choices == CHOICES
    assert table.passes == len(layers) * len(CHOICES)
    for stat in LAYER_BITS_STATS:
        assert sum(len(row) for row in table.values[stat].values()) == len(layers) * len(CHOICES)


def test_table_entry_equals_a_direct_recomputation(table, bench):
    layer, bits = "stage2.0.conv1", 2
    model = bench.build_model(bench.candidates()[0])
    names = list(quantizable_layers(model))
    calib = bench.calibration_batch()

    def loss_and_output(assignment):
        net = quantized_model(model, assignment, bench.act_bits, bench.calibration_inputs()).eval()
        seen = {}
        quantizable_layers(net)[layer].register_forward_hook(lambda m, a, out: seen.update(out=out.double()))
        with torch.no_grad():
            loss = float(F.cross_entropy(net(calib.inputs).double(), calib.labels))
        return loss, seen["out"]

    ref_loss, ref_out = loss_and_output({n: 32 for n in names})
    loss, out = loss_and_output({**{n: 32 for n in names}, layer: bits})
    w = quantizable_layers(model)[layer].weight.detach()
    error = float((quantize_weight(w, bits).double() - w.double()).pow(2).sum())
    assert table.value("lb_weight_error", layer, bits) == pytest.approx(error, rel=1e-9)
    assert table.value("lb_loss_increase", layer, bits) == pytest.approx(loss - ref_loss, rel=1e-6, abs=1e-12)
    assert table.value("lb_output_perturbation", layer, bits) == pytest.approx(
        float((out - ref_out).pow(2).sum()) / calib.inputs.shape[0], rel=1e-6)


def test_lb_params_is_the_layers_weight_count(table, bench):
    model = bench.build_model(bench.candidates()[0])
    for name, layer in quantizable_layers(model).items():
        assert all(table.value("lb_params", name, b) == layer.weight.numel() for b in CHOICES)


def test_more_bits_quantize_the_weight_with_less_error(table):
    for layer in table.layers:
        assert table.value("lb_weight_error", layer, 8) < table.value("lb_weight_error", layer, 2)


def test_hessian_error_is_hawq_v2s_term_and_can_be_added_later(table, bench):
    from emq.baselines import hawq_v2_layer_costs, hawq_v2_traces

    model = bench.build_model(bench.candidates()[0])
    traces = hawq_v2_traces(model, bench.batch(0, 16), 0, samples=SAMPLES)
    costs = hawq_v2_layer_costs(model, CHOICES, traces)
    for n in table.layers:
        for b in CHOICES:
            assert table.value("lb_hessian_error", n, b) == pytest.approx(costs[n][b], rel=1e-9)
    bare = LayerBitsTable(table.layers, table.choices,
                          {k: v for k, v in table.values.items() if k != "lb_hessian_error"}, table.params)
    assert LayerBitsTable.from_json(bare.to_json()) == bare
    assert bare.with_hessian(traces).values == table.values


def test_table_round_trips_through_json_and_refuses_a_damaged_one(table):
    data = json.loads(json.dumps(table.to_json()))
    assert LayerBitsTable.from_json(data) == table
    del data["values"]["lb_params"][table.layers[0]]["8"]
    with pytest.raises(ValueError, match="one entry per bit choice"):
        LayerBitsTable.from_json(data)


def test_a_configurations_statistics_are_its_layers_table_entries(table):
    bits = {n: CHOICES[i % 2] for i, n in enumerate(table.layers)}
    stats = table.network_stats(bits, ["lb_loss_increase"])
    assert list(stats.layers) == list(table.layers)
    for n in table.layers:
        value = stats.layers[n]["lb_loss_increase"]
        assert value.dim() == 0 and float(value) == pytest.approx(table.value("lb_loss_increase", n, bits[n]))


def test_catalogue_lists_the_table_statistics_with_their_cost_outside_the_default_set():
    from emq.stats import BIT_STATS
    from emq.stats.compute import applicable_stats, offered_stats

    for name in LAYER_BITS_STATS:
        assert STATS[name].per_layer_bits and STATS[name].layer_local and "|L| x |B|" in STATS[name].cost
        assert name not in applicable_stats(True) and name not in BIT_STATS and name in offered_stats(True)
        assert name not in offered_stats(False)


# --------------------------------------------------------------------------------------- cache and baselines
def test_cached_table_is_computed_once_and_read_back(bench, tmp_path, fast_tables, monkeypatch):
    first = stats_cache.layer_bits_table(bench, StatsConfig(), tmp_path)
    monkeypatch.setattr(stats_cache, "compute_layer_bits_table", None)  # a second computation would fail
    assert stats_cache.layer_bits_table(bench, StatsConfig(), tmp_path) == first
    assert first.choices == (2, 3, 4, 8)


def test_qloss_layer_sum_is_minus_the_sum_of_table_entries(bench, tmp_path, fast_tables):
    cands = bench.candidates()[:6]
    scores = baseline_scores(TinyMQ(), ["qloss_layer_sum"], StatsConfig(), progress=False, candidates=cands,
                             cache_root=tmp_path)["qloss_layer_sum"]
    table = stats_cache.layer_bits_table(bench, StatsConfig(), tmp_path)
    expected = [-sum(table.value("lb_loss_increase", n, c.bits[n]) for n in table.layers) for c in cands]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_separable_baselines_say_so_and_program_ones_agree_with_is_separable():
    assert get_baseline("qloss_layer_sum").trivial and get_baseline("qloss_layer_sum").separable
    assert get_baseline("hawq_v2").separable and get_baseline("bparams").separable
    assert not get_baseline("qloss_calib").separable and not get_baseline("qloss").separable
    for baseline in list_baselines("mq"):
        if baseline.kind == "program" and not baseline.needs_teacher:
            assert baseline.separable == is_separable(baseline.proxy()), baseline.name


# ------------------------------------------------------------------------------------------------ separability
@pytest.mark.parametrize("formula", [
    "sum_layers(mean(lb_loss_increase))",
    "sum_layers(s_mul(mean(lb_hessian_error), s_log(mean(lb_params))))",
    "n_neg(sum_layers(mean(mul(lb_weight_error, lb_output_perturbation))))",
    "n_sub(sum_layers(mean(lb_loss_increase)), wmean_layers(mean(lb_weight_error)))",
])
def test_is_separable_accepts_sums_over_layers_of_the_layers_own_terms(formula):
    assert is_separable(Proxy.from_formula(formula)), why_not_separable(Proxy.from_formula(formula))


@pytest.mark.parametrize("formula, reason", [
    ("sum_layers(mean(sum_layers_t(lb_loss_increase)))", "across layers"),
    ("sum_layers(mean(grad))", "whole quantized network"),
    ("sum_layers(mean(mul(lb_loss_increase, act)))", "whole quantized network"),
    ("max_layers(mean(lb_loss_increase))", "linear combination"),
    ("n_mul(sum_layers(mean(lb_loss_increase)), sum_layers(mean(lb_params)))", "linear combination"),
    ("n_log(sum_layers(mean(lb_loss_increase)))", "one sign"),
])
def test_is_separable_rejects_cross_layer_and_network_programs(formula, reason):
    assert reason in why_not_separable(Proxy.from_formula(formula))


def test_separable_grammar_and_its_variation_build_only_separable_programs():
    grammar = Grammar(LAYER_BITS_STATS, GrowConfig(op_weights=separable_op_weights()))
    rng = random.Random(0)
    population = [program(random_program(rng, grammar)) for _ in range(100)]
    children = []
    for _ in range(200):
        a, b = rng.sample(population, 2)
        children += [mutate(a, rng, grammar, Limits())[0], *crossover(a, b, rng, Limits())]
    bad = [p.formula() for p in population + children if not is_separable(p)]
    assert not bad
    assert all(p.stats_needed <= set(LAYER_BITS_STATS) for p in population + children)


# ------------------------------------------------------------------------------------------------ --separable
def test_old_config_json_reads_as_not_separable():
    data = SearchConfig().to_json()
    del data["separable"]
    assert SearchConfig.from_json(data).separable is False
    assert SearchConfig.from_json(SearchConfig(separable=True).to_json()).separable is True


def test_separable_search_reads_only_the_table_statistics(bench):
    from search.session import SearchSettingsError, separable_stats

    assert separable_stats(bench, StatsConfig()).stat_names == LAYER_BITS_STATS
    assert separable_stats(bench, StatsConfig(stat_names=("grad", "lb_params"))).stat_names == ("lb_params",)
    with pytest.raises(SearchSettingsError, match="names none"):
        separable_stats(bench, StatsConfig(stat_names=("grad",)))


def test_separable_search_on_mq_digits_evolves_separable_programs_to_a_verdict(tmp_path, fast_tables):
    from search.benchmark_run import search_benchmark
    from search.session import separable_stats

    bench = TinyMQ()
    config = SearchConfig(separable=True, population=6, generations=2, hof_size=2)
    result = search_benchmark(bench, separable_stats(bench, StatsConfig()), config, tmp_path / "run",
                              baselines=["qloss_layer_sum", "hawq_v2"], max_search=24, max_heldout=24,
                              progress=False, cache_root=tmp_path / "cache", n_boot=50)
    assert result.finished and result.hall_of_fame
    for entry in result.hall_of_fame:
        assert is_separable(Proxy.from_formula(entry["formula"])), entry["formula"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["search"]["separable"] is True
    assert set(saved["stats"]) <= set(LAYER_BITS_STATS)
    hall = json.loads((tmp_path / "run" / "hall_of_fame.json").read_text())
    # the bar is the best trivial predictor of the search's cost; qloss_calib (a pass per configuration) is a row
    assert hall["best_trivial"]["test_acc"]["name"] in trivial_baselines(bench, separable_only=True)
    assert "qloss_calib" not in trivial_baselines(bench, separable_only=True)
    columns = RunFolder(tmp_path / "run").read_scores().scores
    assert "baseline:qloss_calib" in columns and "baseline:qloss_layer_sum" in columns
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "among the separable ones" in summary
    assert summary.count("| qloss_layer_sum |") == 1  # each baseline is one row
