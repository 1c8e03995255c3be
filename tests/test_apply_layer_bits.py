"""`emq apply mq` on programs over the per-(layer, bits) table (`lb_*`): exact scores, no pass, the exact MILP."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from emq.apply.allocation import allocate
from emq.apply.bits import BitObjective, check_stats
from emq.apply.budget import Budget, size_bits
from emq.apply.mq import benchmark_objective
from emq.baselines import baseline_scores
from emq.bench.mq_digits import MQDigitsBenchmark
from emq.errors import StatUnavailableError
from emq.proxy import Proxy
from emq.stats.cache import layer_bits_table
from emq.stats.config import StatsConfig

QLOSS_LAYER_SUM = "n_neg(sum_layers(mean(lb_loss_increase)))"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def bench():
    return MQDigitsBenchmark()


@pytest.fixture(scope="module")
def objective(bench, cache, one_thread) -> BitObjective:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMQ_CACHE_DIR", str(cache))
        return benchmark_objective(bench, Proxy.from_formula(QLOSS_LAYER_SUM))


def test_a_table_program_costs_no_statistics_pass_and_scores_as_the_search_does(objective, bench, cache):
    cands = bench.candidates()[:20]
    searched = baseline_scores(bench, ["qloss_layer_sum"], StatsConfig(), progress=False, candidates=cands,
                               cache_root=cache)["qloss_layer_sum"]
    assert objective.stats_passes == 0
    np.testing.assert_allclose([objective.score(c.bits) for c in cands], searched, rtol=1e-5)


def test_a_table_program_is_allocated_by_the_exact_milp_no_benchmark_configuration_beats(objective, bench):
    assert objective.separable() is not None, objective.why_not_separable
    budget = Budget(3.0, "avg-bits")
    alloc = allocate(objective, budget, method="auto")
    assert alloc.method.startswith("milp")
    chosen = objective.score(alloc.bits)
    cap = budget.cap(sum(objective.params.values()))
    assert alloc.size_bits <= cap
    fitting = [c.bits for c in bench.candidates() if size_bits(c.bits, objective.params) <= cap]
    assert fitting, "some benchmark configurations fit 3 average bits"
    assert chosen >= max(objective.score(b) for b in fitting) - 1e-9


def test_a_program_mixing_table_and_pass_statistics_reads_the_table_at_each_layers_bits(bench, cache, monkeypatch):
    monkeypatch.setenv("EMQ_CACHE_DIR", str(cache))
    proxy = Proxy.from_formula("n_neg(sum_layers(s_mul(mean(lb_loss_increase), mean(abs(weight)))))")
    mixed = benchmark_objective(bench, proxy)
    table = layer_bits_table(bench, StatsConfig(), cache)
    assert mixed.stats_passes == len(mixed.choices)  # weight is local: one pass per width, lb_* from the table
    bits = bench.candidates()[3].bits
    stats = mixed.stats_for(bits)
    for name in mixed.layers:
        assert float(stats.layers[name]["lb_loss_increase"]) == pytest.approx(
            table.value("lb_loss_increase", name, bits[name]), rel=1e-6)
        assert "weight" in stats.layers[name]


def test_a_table_program_without_a_table_is_refused_naming_the_fix():
    with pytest.raises(StatUnavailableError, match=r"lb_loss_increase.*emq apply mq NAME"):
        check_stats(Proxy.from_formula(QLOSS_LAYER_SUM))


def test_emq_apply_mq_allocates_a_table_program_exactly(cache, monkeypatch):
    import cli

    monkeypatch.setenv("EMQ_CACHE_DIR", str(cache))
    out = CliRunner().invoke(cli.main, ["apply", "mq", "mq-digits", "--formula", QLOSS_LAYER_SUM, "--budget", "3",
                                        "--budget-unit", "avg-bits"])
    assert out.exit_code == 0, out.output
    assert "milp (optimal)" in out.output
