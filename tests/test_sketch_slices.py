"""Slices (`--sketch-slices`): fixed sub-tensors that let shape-reading programs run on a small part of each layer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emq.evaluate import StackedStats, evaluate_stacked, reading
from emq.proxy import Proxy
from emq.sketch import slice_counts, slice_indices
from emq.stats import NetworkStats
from search.config import SearchConfig
from search.pool import EvaluationPool
from search.synthetic import synthetic_problem

from conftest import make_stats, search_synthetic, without_timing

K = 64
SAME_SHAPE = (("a", (16, 8, 3, 3)), ("b", (16, 8, 3, 3)))


def formula(text: str) -> Proxy:
    return Proxy.from_formula(text)


@pytest.mark.parametrize("shape", [(64, 64, 3, 3), (16, 8, 3, 3), (40, 10), (200,), (4, 300, 2, 2), (3, 900)])
def test_a_slice_keeps_the_rank_and_at_most_k_entries(shape):
    counts = slice_counts(shape, K)
    assert counts is not None
    kept = math.prod(counts) * math.prod(shape[len(counts):])
    assert 1 <= kept <= K
    assert all(1 <= c <= s for c, s in zip(counts, shape))
    assert len(counts) == min(2, len(shape))  # dims past the second stay whole


@pytest.mark.parametrize("shape", [(8, 8), (60,), (4, 4, 5, 5), (2, 2, 16, 16)])
def test_small_or_wide_statistics_are_not_sliced(shape):
    # at most K entries; or the dims past the second hold more than K / 4 entries
    assert slice_counts(shape, K) is None


def test_slices_are_taken_alike_in_every_candidate_and_statistic():
    nets = [make_stats(s, SAME_SHAPE) for s in range(5)]
    stack = StackedStats(nets, sketch=K, slices=True, block=4)
    index = slice_indices("a", (16, 8, 3, 3), K)
    assert index is slice_indices("a", (16, 8, 3, 3), K)  # built once
    other = slice_indices("b", (16, 8, 3, 3), K)  # another layer: other indices
    assert not all(torch.equal(x, y) for x, y in zip(index, other))
    for blk in stack.blocks:
        for col in blk.columns:
            idx = slice_indices(col.name, (16, 8, 3, 3), K)
            for stat in ("weight", "grad"):
                sliced, batched = col.slices[stat]
                assert batched and tuple(sliced.shape[1:]) == (len(idx[0]), len(idx[1]), 3, 3)
                for row, k in enumerate(col.members):
                    net = nets[int(blk.index[k])]
                    expect = net.layers[col.name][stat].index_select(0, idx[0]).index_select(1, idx[1])
                    assert torch.equal(sliced[row], expect)
            assert "act" not in col.slices  # 2 x 16: not larger than K


def _sliced_by_hand(net: NetworkStats) -> NetworkStats:
    layers = {}
    for name, d in net.layers.items():
        layers[name] = dict(d)
        for stat in ("weight", "grad", "bits", "quant_error"):
            idx = slice_indices(name, tuple(d[stat].shape), K)
            layers[name][stat] = d[stat].index_select(0, idx[0]).index_select(1, idx[1])
    return NetworkStats(layers, net.params, net.flops)


@pytest.mark.parametrize("text", [
    "mean_layers(max(softmax_last(weight)))",              # exact on the kept rows
    "max_layers(max(row_norms(mul(grad, weight))))",
    "mean_layers(eig_max(corrcoef(weight)))",
    "median_layers(mean(flatten_sort(abs_diff(grad, weight))))",
])
def test_a_shape_reading_program_reads_the_slices(text):
    nets = [make_stats(s, SAME_SHAPE) for s in range(6)]
    stack = StackedStats(nets, sketch=K, slices=True)
    assert reading(formula(text).root, stack) == "slices"
    sliced, _ = evaluate_stacked(formula(text), stack)
    by_hand, _ = evaluate_stacked(formula(text), StackedStats([_sliced_by_hand(n) for n in nets]))
    full, _ = evaluate_stacked(formula(text), StackedStats(nets))
    assert np.allclose(sliced, by_hand, rtol=1e-5, atol=1e-7)
    assert not np.allclose(sliced, full)  # it is an estimate on a part of each layer, not the full value


def test_sums_over_a_slice_scale_to_the_full_count():
    nets = [make_stats(s, SAME_SHAPE) for s in range(4)]
    stack = StackedStats(nets, sketch=K, slices=True)
    # softmax over the last dim (kept whole) sums to 1 per row: the rows kept times n / k is every row
    scores, _ = evaluate_stacked(formula("sum_layers(sum(softmax_last(weight)))"), stack)
    assert np.allclose(scores, 2 * 16 * 8 * 3, rtol=1e-5)


def test_slices_leave_sketch_readers_and_cross_layer_programs_as_they_were():
    nets = [make_stats(s, SAME_SHAPE) for s in range(6)]
    plain, sketched, both = StackedStats(nets), StackedStats(nets, sketch=K), StackedStats(nets, sketch=K, slices=True)
    entry_wise = formula("sum_layers(l1(mul(grad, abs(weight))))")
    assert reading(entry_wise.root, both) == "sketch"
    assert np.array_equal(evaluate_stacked(entry_wise, sketched)[0], evaluate_stacked(entry_wise, both)[0])
    cross = formula("mean_layers(max(softmax_last(mean_layers_t(weight))))")
    assert reading(cross.root, both) is None
    assert np.array_equal(evaluate_stacked(cross, plain)[0], evaluate_stacked(cross, both)[0], equal_nan=True)
    shape_reading = formula("mean_layers(mean(softmax_last(weight)))")
    assert reading(shape_reading.root, sketched) is None  # without slices: the full tensors, as before
    assert np.array_equal(evaluate_stacked(shape_reading, sketched)[0], evaluate_stacked(shape_reading, plain)[0])


def test_views_with_and_without_slices_share_the_full_tensors():
    nets = [make_stats(s, SAME_SHAPE) for s in range(4)]
    plain = StackedStats(nets)
    sliced = plain.with_sketch(K, slices=True)
    assert sliced is plain.with_sketch(K, slices=True) and sliced is not plain.with_sketch(K)
    assert sliced.blocks[0].columns[0].tensors is plain.blocks[0].columns[0].tensors
    assert plain.with_sketch(0, slices=True) is plain  # k = 0: the full statistics, no slices
    full = sliced.with_sketch(0)
    assert (full.sketch, full.slices) == (0, False) and full.blocks[0].columns[0].slices == {}


def test_sliced_shards_score_like_the_whole_set():
    nets = [make_stats(s, SAME_SHAPE) for s in range(64)]
    programs = [formula("mean_layers(mean(softmax_last(weight)))"), formula("max_layers(l2(row_norms(grad)))")]
    whole = [evaluate_stacked(p, StackedStats(nets, sketch=K, slices=True, block=8))[0] for p in programs]
    with EvaluationPool("threading", n_jobs=2, block=8) as pool:
        data = pool.attach(nets, sketch=K, slices=True)
        sharded = [s for s, _ in pool.score(data, programs)]
        full = [s for s, _ in pool.score(data.with_sketch(0), programs)]
    assert all(np.array_equal(a, b) for a, b in zip(whole, sharded))
    assert all(np.array_equal(a, evaluate_stacked(p, StackedStats(nets, block=8))[0]) for a, p in zip(full, programs))


# ------------------------------------------------------------------- a sliced search
SEEDS = ("sum_layers(l1(mul(hessian_diag, square(quant_error))))",
         "mean_layers(max(softmax_last(mul(grad, quant_error))))",
         "max_layers(l2(row_norms(hessian_diag)))")
SLICED = SearchConfig(population=12, generations=3, seed=2, probe_size=8, hof_size=4, targets=("test_acc",),
                      sketch=16, sketch_slices=True, seed_formulas=SEEDS)


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=48, n_heldout=8, probe_size=8)


def test_a_sliced_run_rescores_its_hall_on_full_statistics_and_resumes_exactly(problem, tmp_path):
    reference = search_synthetic(problem, tmp_path / "whole", SLICED)
    assert reference.hall_of_fame and all("search_sketched" in e for e in reference.hall_of_fame)
    full = StackedStats(problem.search)
    from emq.fitness import get_metric

    kendall = get_metric("kendall")
    for entry in reference.hall_of_fame:
        scores = evaluate_stacked(formula(entry["formula"]), full)[0]
        assert entry["fitness"] == pytest.approx(kendall(scores, problem.truth["test_acc"]), abs=1e-12)
    run = tmp_path / "resumed"
    assert not search_synthetic(problem, run, SLICED, stop_after=1).finished
    resumed = search_synthetic(problem, run, SLICED, resume=True)
    assert without_timing(resumed.log) == without_timing(reference.log)
    assert resumed.hall_of_fame == reference.hall_of_fame


def test_slices_need_a_sketch_and_old_configs_read_as_off(run):
    with pytest.raises(ValueError, match=r"--sketch-slices\) needs sketch K"):
        SearchConfig(sketch_slices=True)
    data = SLICED.to_json()
    data.pop("sketch_slices")
    assert SearchConfig.from_json(data).sketch_slices is False
    assert "--sketch-slices" in run("search", "--help").output
    refused = run("search", "mq-digits", "--sketch-slices")
    assert refused.exit_code != 0 and "--sketch" in refused.output and "Traceback" not in refused.output
