"""`emq apply` as library calls: one request in, one result (each proxy x budget); eligibility is a property."""
from __future__ import annotations

import pytest

from emq import Proxy
from emq.apply.arch import ARCH_SPACES, get_space
from emq.apply.budget import Budget
from emq.apply.requests import (
    Allocations, ApplyRequestError, ArchRequest, ArchSearches, BitRequest, apply_arch, apply_bits,
)
from emq.paths import results_dir
from emq.stats.config import StatsConfig

needs_mq_digits = pytest.mark.skipif(
    not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
    reason="results/mq-digits is not built (run: emq bench build mq-digits)",
)
pytestmark = pytest.mark.usefixtures("one_thread")
LOCAL = "n_neg(sum_layers(l2(quant_error)))"


@pytest.fixture(scope="module")
def mq_digits():
    from emq.bench.registry import get_benchmark

    if not (results_dir() / "mq-digits" / "ground_truth.json").exists():
        pytest.skip("results/mq-digits is not built")
    return get_benchmark("mq-digits")


@needs_mq_digits
def test_apply_bits_gives_one_allocation_per_proxy_and_budget_proxy_by_proxy(mq_digits):
    proxies = {"a": Proxy.from_formula(LOCAL), "b": Proxy.from_formula("n_neg(sum_layers(l1(quant_error)))")}
    budgets = (Budget(2.5, "avg-bits"), Budget(3, "avg-bits"))
    result = apply_bits(mq_digits, proxies, BitRequest((2.5, 3), "avg-bits"),
                        StatsConfig(batch_size=8, device="cpu"), progress=False)
    assert isinstance(result, Allocations)
    rows = result.to_json()
    assert [(r["name"], r["budget"]) for r in rows] == [(n, b.describe()) for n in proxies for b in budgets]
    assert all(r["average_bits"] <= float(r["budget"].split()[0]) and r["optimal"] for r in rows)
    assert {"name", "proxy", "bits", "method", "score", "size_mb", "average_bits", "cap_bits"} <= set(rows[0])
    assert result.to_text().count("bits: ") == 4


def test_apply_bits_refuses_a_benchmark_of_another_family_before_any_work():
    from emq.bench.registry import get_benchmark

    if not (results_dir() / "vit-digits" / "ground_truth.json").exists():
        pytest.skip("results/vit-digits is not built")
    with pytest.raises(ApplyRequestError, match="needs an MQ benchmark"):
        apply_bits(get_benchmark("vit-digits"), {"p": Proxy.from_formula(LOCAL)}, BitRequest((3,), "avg-bits"),
                   StatsConfig())


@needs_mq_digits
def test_compare_eligibility_is_the_benchmarks_property_not_its_name(mq_digits, monkeypatch):
    request = BitRequest((3,), "avg-bits", compare=True)
    assert mq_digits.measures_ptq_accuracy
    monkeypatch.setattr(mq_digits, "measures_ptq_accuracy", False)
    with pytest.raises(ApplyRequestError, match="measures real PTQ accuracy.*mq-digits has none"):
        apply_bits(mq_digits, {"p": Proxy.from_formula(LOCAL)}, request, StatsConfig())


@needs_mq_digits
@pytest.mark.parametrize("request_, message", [
    (BitRequest((3,), "avg-bits", compare=True, exact_stats=True, method="ga"), "drop --exact-stats"),
    (BitRequest((3,), "avg-bits", compare=True, baselines=("nwot",)), "only program baselines"),
    (BitRequest((3,), "avg-bits", compare=True, allocators=("none", "hawq_v2")), "excludes the other"),
], ids=["exact-stats", "model-baseline", "none-and-more"])
def test_compare_requests_that_cannot_run_fail_in_one_line(mq_digits, request_, message):
    with pytest.raises(ApplyRequestError, match=message):
        apply_bits(mq_digits, {"p": Proxy.from_formula(LOCAL)}, request_, StatsConfig())


def test_a_budget_that_is_not_a_positive_number_fails_when_asked_for():
    from emq.errors import BudgetError

    with pytest.raises(BudgetError, match="positive"):
        BitRequest((3, 0), "avg-bits")


def test_training_eligibility_is_the_spaces_property_and_the_message_lists_the_spaces_that_have_it():
    able = sorted(n for n in ARCH_SPACES if get_space(n).trained_by is not None)
    assert able == ["vit-digits"] and get_space("pit").trained_by is None
    with pytest.raises(ApplyRequestError, match="only vit-digits has \\(not pit\\)"):
        apply_arch({"p": Proxy.from_formula("sum_layers(l2(grad))")}, ArchRequest("pit", (10**6,), train=True),
                   StatsConfig())


def test_apply_arch_gives_one_search_per_proxy_and_budget():
    proxies = {"w": Proxy.from_formula("sum_layers(l2(mul(weight, grad)))"),
               "g": Proxy.from_formula("sum_layers(l2(grad))")}
    request = ArchRequest("vit-digits", (25000, 40000), population=3, generations=1)
    result = apply_arch(proxies, request, StatsConfig(batch_size=8, device="cpu"), progress=False)
    assert isinstance(result, ArchSearches)
    rows = result.to_json()
    assert [(r["name"], r["max_params"]) for r in rows] == [(n, b) for n in proxies for b in request.budgets]
    assert all(r["params"] <= r["max_params"] and r["space"] == "vit-digits" for r in rows)
    assert result.to_text().count("  arch: ") == 4
