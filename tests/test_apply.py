"""Reuse of exported proxies: the Proxy.score API, bit allocation under a size budget, ViT search under a params budget."""
from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from emq import Proxy
from emq.apply.arch import ArchObjective, arch_key, get_space, search_arch
from emq.apply.allocation import allocate
from emq.apply.bits import BitObjective
from emq.apply.budget import Budget, size_bits
from emq.apply.decompose import layer_sum
from emq.bench.base import Batch
from emq.errors import BudgetError, NotSeparableError, StatUnavailableError
from emq.paths import results_dir
from emq.stats.compute import compute_stats

needs_mq_digits = pytest.mark.skipif(
    not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
    reason="results/mq-digits is not built (run: emq bench build mq-digits)",
)
needs_vit_digits = pytest.mark.skipif(
    not (results_dir() / "vit-digits" / "ground_truth.json").exists(),
    reason="results/vit-digits is not built (run: emq bench build vit-digits)",
)

HESSIAN_PROXY = "n_neg(sum_layers(l2(mul(hessian_diag, quant_error))))"


pytestmark = pytest.mark.usefixtures("one_thread")


LOCAL_PROXY = "n_neg(sum_layers(l2(quant_error)))"


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


def tiny_batch(n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g), "random", 0)


@pytest.fixture(scope="module")
def hessian_objective(one_thread) -> BitObjective:
    return BitObjective(Proxy.from_formula(HESSIAN_PROXY), tiny_cnn(), tiny_batch())


def configs(objective: BitObjective):
    return itertools.product(objective.choices, repeat=len(objective.layers))


# --------------------------------------------------------------------------- Proxy API
def test_score_on_a_model_equals_evaluating_computed_stats_after_a_save_load_round_trip(tmp_path):
    model, batch = tiny_cnn(), tiny_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = Proxy.from_formula(HESSIAN_PROXY).save(tmp_path / "p.json")
    proxy = Proxy.load(path)
    bits = {"0": 2, "2": 4, "5": 8, "7": 3}
    score = proxy.score(model, batch, bits)
    stats = compute_stats(model, batch, bits, sorted(proxy.stats_needed), calib_inputs=batch.inputs)
    assert isinstance(score, float) and score == pytest.approx(proxy.evaluate(stats), rel=1e-6)
    assert proxy.score(model, (batch.inputs, batch.labels), bits) == pytest.approx(score, rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_score_without_labels_is_refused_for_loss_statistics_only():
    model, batch = tiny_cnn(), tiny_batch()
    assert math.isfinite(Proxy.from_formula("sum_layers(l2(act))").score(model, batch.inputs))
    with pytest.raises(ValueError, match="grad"):
        Proxy.from_formula("sum_layers(l2(grad))").score(model, batch.inputs)


# ------------------------------------------------------------------------------ budgets
@pytest.mark.parametrize("value,unit,total", [(0.065, "mb", 173840), (3.0, "avg-bits", 173840), (2.9, "avg-bits", 7),
                                              (1e-3, "mb", 100), (4.1, "avg-bits", 2512)])
def test_budget_cap_is_the_largest_size_within_the_budget(value, unit, total):
    scale = 8e6 if unit == "mb" else total
    cap = Budget(value, unit).cap(total)
    assert cap / scale <= value < (cap + 1) / scale


def test_allocations_never_exceed_the_budget_even_at_its_exact_edge(hessian_objective):
    params = hessian_objective.params
    rng = random.Random(0)
    for _ in range(4):
        widths = [rng.choice(hessian_objective.choices) for _ in params]
        edge = sum(b * p for b, p in zip(widths, params.values())) / 8e6  # a budget some configuration meets exactly
        for method in ("milp", "ga"):
            alloc = allocate(hessian_objective, Budget(edge, "mb"), method=method, population=8, generations=3)
            assert alloc.size_bits <= Budget(edge, "mb").cap(sum(params.values()))
            assert alloc.size_mb <= edge and size_bits(alloc.bits, params) == alloc.size_bits


def test_budget_below_the_smallest_configuration_is_a_budget_error(hessian_objective):
    with pytest.raises(BudgetError, match="every layer at 2 bits"):
        allocate(hessian_objective, Budget(1.5, "avg-bits"))


# ------------------------------------------------------------------- decomposition, MILP
@pytest.mark.parametrize("formula,separable", [
    ("sum_layers(l2(grad))", True),
    ("n_neg(mean_layers(sum(quant_error)))", True),
    ("n_sub(wmean_layers(l2(weight)), sum_layers(mean(bits)))", True),
    ("n_log(n_neg(sum_layers(l2(quant_error))))", True),
    ("median_layers(l2(quant_error))", False),
    ("n_mul(sum_layers(l2(grad)), sum_layers(l2(weight)))", False),
    ("n_log(n_log(sum_layers(l2(grad))))", False),
])
def test_layer_sum_recognises_monotone_functions_of_sums_over_layers(formula, separable):
    assert (layer_sum(Proxy.from_formula(formula)) is not None) is separable


def test_separable_terms_add_up_to_the_program_score(hessian_objective):
    sep = hessian_objective.separable()
    assert sep is not None
    rng = np.random.default_rng(0)
    for _ in range(5):
        ks = rng.integers(0, len(hessian_objective.choices), len(hessian_objective.layers))
        widths = tuple(hessian_objective.choices[k] for k in ks)
        assert sep.score(ks) == pytest.approx(hessian_objective.score(widths), rel=1e-4)


def test_milp_and_ga_find_the_brute_force_optimum_of_a_separable_proxy(hessian_objective):
    budget = Budget(4.0, "avg-bits")
    cap = budget.cap(sum(hessian_objective.params.values()))
    params = list(hessian_objective.params.values())
    feasible = [c for c in configs(hessian_objective) if sum(b * p for b, p in zip(c, params)) <= cap]
    best = max(hessian_objective.score(c) for c in feasible)
    milp = allocate(hessian_objective, budget, method="milp")
    ga = allocate(hessian_objective, budget, method="ga", seed=0, population=30, generations=20)
    assert milp.method == "milp" and milp.optimal
    assert milp.score == pytest.approx(best, rel=1e-5)
    assert ga.score == pytest.approx(best, rel=1e-5)


def test_ga_is_seeded(hessian_objective):
    runs = [allocate(hessian_objective, Budget(3.5, "avg-bits"), method="ga", seed=3, population=10, generations=4)
            for _ in range(2)]
    assert runs[0].bits == runs[1].bits and runs[0].history == runs[1].history


def test_local_statistics_model_equals_the_actually_quantized_network():
    objective = BitObjective(Proxy.from_formula(LOCAL_PROXY), tiny_cnn(), tiny_batch())
    assert objective.stats_passes == len(objective.choices)
    for widths in [(2, 3, 4, 8), (8, 8, 2, 2), (3, 3, 3, 3)]:
        assert objective.score(widths) == pytest.approx(objective.exact_score(widths), rel=1e-6)


def test_milp_refuses_a_proxy_that_is_not_a_sum_over_layers():
    objective = BitObjective(Proxy.from_formula("n_neg(median_layers(l2(quant_error)))"), tiny_cnn(), tiny_batch())
    with pytest.raises(NotSeparableError, match="use --method ga"):
        allocate(objective, Budget(4, "avg-bits"), method="milp")
    assert allocate(objective, Budget(4, "avg-bits"), population=8, generations=2).method == "ga"


def test_allocation_leaves_the_model_weights_unchanged():
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objective = BitObjective(Proxy.from_formula(HESSIAN_PROXY), model, tiny_batch(), exact=True)
    allocate(objective, Budget(3, "avg-bits"), method="ga", population=4, generations=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- arch search
def test_pit_archs_are_shrunk_into_the_budget_in_the_ground_truth_format():
    space = get_space("pit")
    rng = random.Random(0)
    budget = space.params(space.smallest()) * 3
    for _ in range(2):
        arch = space.shrink_into(space.sample(rng), budget, rng)
        assert space.params(arch) <= budget
        assert set(arch) == {"base_dim", "mlp_ratio", "depth", "num_heads"} and len(arch["depth"]) == 3


def test_arch_search_stays_within_the_budget_and_is_seeded():
    space = get_space("vit-digits")
    objective = ArchObjective(Proxy.from_formula("sum_layers(l2(mul(weight, grad)))"), space, batch_size=8)
    runs = [search_arch(objective, 30000, population=4, generations=1, seed=1) for _ in range(2)]
    assert runs[0].params <= 30000 and space.params(runs[0].arch) == runs[0].params
    assert arch_key(runs[0].arch) == arch_key(runs[1].arch)
    assert set(runs[0].arch) == {"hidden_dim", "depth", "mlp_ratio", "num_heads"}
    with pytest.raises(BudgetError, match="smallest vit-digits arch"):
        search_arch(objective, 1000)


def test_a_bit_statistic_in_a_vit_proxy_is_named_in_the_error():
    with pytest.raises(StatUnavailableError, match="quant_error"):
        ArchObjective(Proxy.from_formula("sum_layers(l2(quant_error))"), get_space("vit-digits"))


@needs_vit_digits
def test_vit_digits_comparison_trains_new_archs_and_reads_known_ones(monkeypatch):
    from types import SimpleNamespace

    import emq.bench.vit_digits_train as vit_digits_train
    from emq.apply.vit import compare_vit_digits
    from emq.bench.registry import get_benchmark

    real = get_benchmark("vit-digits")
    monkeypatch.setattr(vit_digits_train, "train_and_test", lambda *args, **kwargs: 0.5)
    bench = SimpleNamespace(gt={**real.gt, "candidates": real.gt["candidates"][:4]}, space=real.space)
    budget = max(c["params"] for c in bench.gt["candidates"])
    result = compare_vit_digits(bench, {"snip": Proxy.from_formula("sum_layers(l2(mul(weight, grad)))")}, [budget],
                                population=4, generations=1, batch_size=8)
    methods = [r.method for r in result.rows]
    assert methods == ["search: snip", "proxy top-1: snip", "#params", "median", "best (oracle)"]
    assert all(r.params is None or r.params <= budget for r in result.rows)
    searched = result.rows[0]
    assert searched.accuracy["test_acc"] == (0.5 if searched.arch_id is None else
                                             next(c["test_acc"] for c in bench.gt["candidates"]
                                                  if c["id"] == searched.arch_id))
    assert "| max params |" in result.to_markdown("emq apply vit ...")


# ------------------------------------------------------------------------------ CLI
@needs_mq_digits
def test_cli_apply_mq_allocates_within_a_tiny_budget_with_a_search_run_folder_as_proxy(run, tmp_path):
    from search.hall_of_fame import HOF_FORMAT

    folder = tmp_path / "search-run"
    folder.mkdir()
    program = Proxy.from_formula(LOCAL_PROXY).to_json()
    (folder / "hall_of_fame.json").write_text(json.dumps({"format": HOF_FORMAT, "programs": [{"proxy": program}]}))
    result = run("apply", "mq", "mq-digits", "--proxy", str(folder), "--budget", "2.2", "--budget-unit", "avg-bits",
                 "--json", "--out", str(tmp_path / "alloc.json"))
    assert result.exit_code == 0, result.output
    (alloc,) = json.loads(result.stdout)
    assert alloc["name"] == "search-run" and alloc["proxy"] == LOCAL_PROXY and alloc["method"] == "milp" and alloc["optimal"]
    assert alloc["average_bits"] <= 2.2
    assert set(alloc["bits"].values()) <= {2, 3, 4, 8}
    assert json.loads((tmp_path / "alloc.json").read_text())[0]["bits"] == alloc["bits"]


@needs_mq_digits
def test_cli_apply_mq_compare_measures_real_accuracy(run):
    result = run("apply", "mq", "mq-digits", "--formula", LOCAL_PROXY, "--budget", "2.5", "--budget-unit",
                 "avg-bits", "--compare", "--baseline", "bparams", "--allocator", "hawq_v2", "--random", "1",
                 "--population", "4", "--generations", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    methods = [r["method"] for r in report["rows"]]
    assert methods[:5] == ["formula", "formula (ga)", "bparams", "hawq_v2", "uniform"] and "random" in methods
    proxy_row, ga_row = report["rows"][:2]
    assert proxy_row["objective_score"] >= ga_row["objective_score"]  # the MILP optimum bounds what the GA finds
    assert all(r["average_bits"] <= 2.5 and 0 <= r["test_acc"] <= 1 for r in report["rows"])


@needs_mq_digits
def test_cli_apply_user_errors_are_one_line(run):
    result = run("apply", "mq", "mq-digits", "--formula", LOCAL_PROXY, "--budget", "0.001")
    assert result.exit_code != 0 and "below the smallest configuration" in result.output
    assert "Traceback" not in result.output
    result = run("apply", "mq", "mq-digits", "--formula", "sum_layers(l2(grad))", "--budget", "3",
                 "--budget-unit", "avg-bits", "--method", "milp", "--exact-stats")
    assert result.exit_code != 0 and "--method ga" in result.output


def test_cli_apply_vit_names_the_missing_statistic_and_searches_tiny_vits(run):
    result = run("apply", "vit", "vit-digits", "--formula", "sum_layers(l2(quant_error))", "--max-params", "50000")
    assert result.exit_code != 0 and "quant_error" in result.output and "Traceback" not in result.output
    result = run("apply", "vit", "pit", "--formula", "sum_layers(l2(grad))", "--max-params", "1000000", "--train")
    assert result.exit_code != 0 and "only vit-digits" in result.output
    result = run("apply", "vit", "vit-digits", "--formula", "sum_layers(l2(mul(weight, grad)))", "--max-params",
                 "25000", "--population", "3", "--generations", "1", "--batch-size", "8", "--json")
    assert result.exit_code == 0, result.output
    (found,) = json.loads(result.stdout)
    assert found["params"] <= 25000 and found["space"] == "vit-digits"
