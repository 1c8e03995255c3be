"""Sketched statistics (`--sketch K`): fixed, aligned samples of large statistics; estimates; the hall on full stats."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from emq.evaluate import StackedStats, evaluate_stacked
from emq.fitness import get_metric
from emq.proxy import Proxy
from emq.sketch import sketch_positions, sketchable
from emq.stats import NetworkStats
from primitives import OPS
from search.config import SearchConfig
from search.pool import EvaluationPool
from search.synthetic import synthetic_problem

from conftest import make_stats, search_synthetic, without_timing

K = 64


def big_stats(seed: int, layers=(("conv", (16, 8, 3, 3)), ("fc", (10, 40)))) -> NetworkStats:
    """Return statistics whose layers are larger than K, with a 2-d non-positional matrix beside them."""
    stats = make_stats(seed, layers)
    for name, d in stats.layers.items():
        d["act_channel_corr"] = torch.eye(12) + 0.01 * seed  # a C x C matrix: never sampled
    return stats


def formula(text: str) -> Proxy:
    return Proxy.from_formula(text)


def test_positions_depend_only_on_layer_name_and_shape():
    a = sketch_positions("stage1.conv", (16, 8, 3, 3), K)
    assert torch.equal(a, sketch_positions("stage1.conv", (16, 8, 3, 3), K))
    assert len(a) == K and len(set(a.tolist())) == K and bool((a[1:] > a[:-1]).all())
    assert int(a.max()) < 16 * 8 * 9
    assert not torch.equal(a, sketch_positions("stage2.conv", (16, 8, 3, 3), K))  # another layer: other positions
    assert not torch.equal(a, sketch_positions("stage1.conv", (8, 16, 3, 3), K))  # another shape: other positions
    # a smaller sketch takes a subset of a larger one's positions (a prefix of one permutation)
    assert set(sketch_positions("stage1.conv", (16, 8, 3, 3), 16).tolist()) <= set(a.tolist())


def test_statistics_of_one_layer_share_positions_in_every_candidate():
    nets = [big_stats(s) for s in range(5)]
    whole = StackedStats(nets, sketch=K, block=4)
    alone = StackedStats(nets[4:], sketch=K)  # the same candidate in another stack: the same sample
    pos = sketch_positions("conv", (16, 8, 3, 3), K)
    for stack, members in ((whole, nets), (alone, nets[4:])):
        for blk in stack.blocks:
            col = next(c for c in blk.columns if c.name == "conv")
            for row, k in enumerate(col.members):
                net = members[int(blk.index[k])]
                for stat in ("weight", "grad", "quant_error"):
                    t, batched = col.sketch[stat]
                    assert torch.equal(t[row] if batched else t, net.layers["conv"][stat].reshape(-1)[pos]), stat


def test_only_large_positional_statistics_are_sketched():
    stack = StackedStats([big_stats(s) for s in range(3)], sketch=K)
    sketched = {col.name: set(col.sketch) for col in stack.blocks[0].columns}
    # conv weight 1,152 and fc weight 400 entries are sampled; act (2 x C) is smaller than K; params is 0-d;
    # the channel correlation matrix is read by matrix ops, never sampled
    large = {"weight", "grad", "bits", "quant_error"}
    assert sketched == {"conv": large, "fc": large}
    assert StackedStats([big_stats(0)], sketch=10_000).blocks[0].columns[0].sketch == {}


def test_every_reduction_says_how_it_reads_a_sketch():
    reductions = [op for op in OPS.values() if op.group == "reduction"]
    assert reductions and all(op.sketch for op in reductions), [op.name for op in reductions if not op.sketch]
    # ops that read shapes or positions have no rule: programs using them are scored on full statistics
    assert not any(OPS[name].sketch for name in ("softmax_first", "row_norms", "flatten_sort", "gram", "eigvals"))
    assert sketchable(formula("sum_layers(l1(mul(grad, abs(weight))))").root)
    assert not sketchable(formula("sum_layers(l1(softmax_first(grad)))").root)
    assert not sketchable(formula("sum_layers(sum(sum_layers_t(weight)))").root)


def test_numel_is_the_full_count_under_a_sketch():
    nets = [big_stats(s) for s in range(4)]
    for text in ("sum_layers(numel(weight))", "sum_layers(numel(mul(grad, abs(weight))))"):
        full, _ = evaluate_stacked(formula(text), StackedStats(nets))
        sketched, _ = evaluate_stacked(formula(text), StackedStats(nets, sketch=K))
        assert np.array_equal(full, sketched) and full[0] == 1152 + 400


@pytest.mark.parametrize("reduction, tolerance", [("sum", 0.05), ("l1", 0.02), ("l2", 0.02), ("mean", 0.05),
                                                  ("l2_per_numel", 0.02), ("logsumexp", 0.02)])
def test_sketched_reductions_estimate_the_full_value(reduction, tolerance):
    # One known tensor (entries 1 + |N(0,1)|) sampled by 200 layer names: each sample is a uniform draw of
    # 1,024 of its 40,000 entries, so the mean estimate over the names must sit within a tight band of the truth.
    g = torch.Generator().manual_seed(0)
    w = 1 + torch.randn((100, 400), generator=g).abs()
    names = [f"layer{i}" for i in range(200)]
    net = NetworkStats({n: {"weight": w} for n in names}, {n: w.numel() for n in names})
    proxy = formula(f"mean_layers({reduction}(weight))")
    full = float(evaluate_stacked(proxy, StackedStats([net]))[0][0])
    per_layer = formula(f"max_layers({reduction}(weight))"), formula(f"min_layers({reduction}(weight))")
    sketched = StackedStats([net], sketch=1024)
    estimate = float(evaluate_stacked(proxy, sketched)[0][0])
    assert estimate == pytest.approx(full, rel=tolerance / 5)  # the mean over 200 independent samples
    spread = [float(evaluate_stacked(p, sketched)[0][0]) for p in per_layer]
    assert all(v == pytest.approx(full, rel=tolerance * 3) for v in spread)  # and each one sample is close


def test_sums_scale_so_magnitudes_compare_across_layer_sizes():
    # Two layers of one value: sum on the sketch must give numel * value in each, as on the full tensors.
    net = NetworkStats({"big": {"weight": torch.full((64, 64), 2.0)}, "small": {"weight": torch.full((10, 10), 2.0)}},
                       {"big": 4096, "small": 100})
    for text in ("sum_layers(sum(weight))", "sum_layers(l1(weight))", "max_layers(l2(weight))"):
        full = evaluate_stacked(formula(text), StackedStats([net]))[0]
        sketched = evaluate_stacked(formula(text), StackedStats([net], sketch=K))[0]
        assert sketched == pytest.approx(full, rel=1e-5), text


@pytest.mark.parametrize("text", [
    "sum_layers(l1(softmax_first(grad)))",  # reads positions: scored on the full tensors
    "mean_layers(mean(row_norms(weight)))",
    "mean_layers(sum(mul(weight, act)))",  # weight and act differ in shape: align's rule needs the full tensors
    "mean_layers(eig_max(act_channel_corr))",
])
def test_programs_that_cannot_read_a_sketch_are_scored_on_full_statistics(text):
    nets = [big_stats(s) for s in range(6)]
    full, _ = evaluate_stacked(formula(text), StackedStats(nets))
    sketched, _ = evaluate_stacked(formula(text), StackedStats(nets, sketch=K))
    assert np.array_equal(full, sketched, equal_nan=True)


def test_a_sketch_shares_the_full_stack_and_sketch_zero_is_the_plain_evaluator():
    nets = [big_stats(s) for s in range(6)]
    proxy = formula("sum_layers(l1(mul(grad, abs(weight))))")
    plain = StackedStats(nets)
    sketched = plain.with_sketch(K)
    assert sketched.blocks[0].columns[0].tensors is plain.blocks[0].columns[0].tensors  # no copy of the full stats
    assert sketched is plain.with_sketch(K)  # built once
    full, _ = evaluate_stacked(proxy, plain)
    assert np.array_equal(full, evaluate_stacked(proxy, StackedStats(nets, sketch=0))[0])
    assert np.array_equal(full, evaluate_stacked(proxy, sketched.with_sketch(0))[0])
    estimate, _ = evaluate_stacked(proxy, sketched)
    assert not np.array_equal(full, estimate) and np.allclose(full, estimate, rtol=0.3)


def test_sketched_shards_score_like_the_whole_set():
    nets = [big_stats(s) for s in range(64)]
    programs = [formula("sum_layers(l1(mul(grad, abs(weight))))"), formula("mean_layers(std(square(grad)))")]
    whole = [evaluate_stacked(p, StackedStats(nets, sketch=K, block=8))[0] for p in programs]
    with EvaluationPool("threading", n_jobs=2, block=8) as pool:
        data = pool.attach(nets, sketch=K)
        sharded = [s for s, _ in pool.score(data, programs)]
        full = [s for s, _ in pool.score(data.with_sketch(0), programs)]
    assert all(np.array_equal(a, b) for a, b in zip(whole, sharded))
    assert all(np.array_equal(a, evaluate_stacked(p, StackedStats(nets, block=8))[0])
               for a, p in zip(full, programs))


# ------------------------------------------------------------------- a sketched search
SEEDS = ("sum_layers(l1(mul(hessian_diag, square(quant_error))))",
         "mean_layers(mean(mul(grad, quant_error)))",
         "sum_layers(sum(square(quant_error)))")
# Seed 2: under the DEAP draws its hall holds programs whose sketched fitness differs from the full one (seed 0's
# and 5's hold none), which the rescoring test needs to be able to fail.
SKETCHED = SearchConfig(population=12, generations=3, seed=2, probe_size=8, hof_size=4, targets=("test_acc",),
                        sketch=16, seed_formulas=SEEDS)


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=48, n_heldout=8, probe_size=8)


@pytest.fixture(scope="module")
def sketched_run(problem, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sketched")
    return search_synthetic(problem, run_dir, SKETCHED), run_dir


def test_the_sketched_hall_is_rescored_and_ranked_on_full_statistics(problem, sketched_run):
    result, run_dir = sketched_run
    kendall = get_metric("kendall")
    full_stack, sketch_stack = StackedStats(problem.search), StackedStats(problem.search, sketch=16)
    hall = result.hall_of_fame
    assert hall
    differ = 0
    for entry in hall:
        proxy = formula(entry["formula"])
        full = kendall(evaluate_stacked(proxy, full_stack)[0], problem.truth["test_acc"])
        sketched = kendall(evaluate_stacked(proxy, sketch_stack)[0], problem.truth["test_acc"])
        assert entry["fitness"] == pytest.approx(full, abs=1e-12)
        assert entry["search_sketched"]["fitness"] == pytest.approx(sketched, abs=1e-12)
        differ += not math.isclose(full, sketched)
    assert differ  # the hall held sketched programs whose estimate moved their fitness
    assert [e["fitness"] for e in hall] == sorted((e["fitness"] for e in hall), reverse=True)
    assert [e["rank"] for e in hall] == list(range(1, len(hall) + 1))
    on_disk = json.loads((run_dir / "hall_of_fame.json").read_text())["programs"]
    assert [(p["fitness"], p["search_sketched"]["fitness"]) for p in on_disk] == [
        (e["fitness"], e["search_sketched"]["fitness"]) for e in hall]
    assert json.loads((run_dir / "config.json").read_text())["search"]["sketch"] == 16


def test_resumed_sketched_run_equals_an_uninterrupted_one(problem, sketched_run, tmp_path):
    reference, _ = sketched_run
    run = tmp_path / "resumed"
    first = search_synthetic(problem, run, SKETCHED, stop_after=1)
    assert not first.finished
    resumed = search_synthetic(problem, run, SKETCHED, resume=True)
    assert resumed.finished
    assert without_timing(resumed.log) == without_timing(reference.log)
    assert resumed.hall_of_fame == reference.hall_of_fame


def test_sketch_zero_runs_as_a_search_without_sketch(problem, tmp_path):
    plain = SearchConfig(**{**SKETCHED.to_json(), "sketch": 0})
    result = search_synthetic(problem, tmp_path / "plain", plain)
    assert all("search_sketched" not in e for e in result.hall_of_fame)
    data = plain.to_json()
    data.pop("sketch")
    assert SearchConfig.from_json(data).sketch == 0  # a config.json written before the option reads as off
    with pytest.raises(ValueError, match="sketch"):
        SearchConfig(sketch=8)


def test_a_job_file_and_the_command_line_take_the_sketch(run, tmp_path):
    from search.job import Job

    job = Job.from_mapping({"benchmark": {"name": "mq-digits"}, "search": {"sketch": 1024}, "output": {"dir": "x"}},
                           tmp_path / "job.toml")
    assert job.search["sketch"] == 1024
    assert "--sketch" in run("search", "--help").output
    refused = run("search", "mq-digits", "--sketch", "-1")
    assert refused.exit_code != 0 and "--sketch" in refused.output
