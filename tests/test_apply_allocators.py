"""The allocators beside the proxies in `emq apply mq --compare`: HAWQ-v2 (exact), qloss-greedy, and the reading."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emq.apply.budget import Budget, size_bits
from emq.apply.greedy import CalibrationLoss, allocate_qloss_greedy, greedy_lowering
from emq.apply.hawq_v2 import allocate_hawq_v2, hawq_v2_objective
from emq.apply.reading import reading, standings
from emq.baselines import BaselineContext, get_baseline
from emq.bench.base import Batch
from emq.paths import results_dir
from emq.quant.fake_quant import quantized_model

CHOICES = (2, 3, 4, 8)

needs_mq_digits = pytest.mark.skipif(
    not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
    reason="results/mq-digits is not built (run: emq bench build mq-digits)",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10)).eval()


def tiny_batch(n: int = 8, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g), "random", seed)


def edge_budgets(params: list[int]) -> list[Budget]:
    """Budgets some configurations meet exactly (the cap's edge), plus round average bits."""
    rng = torch.Generator().manual_seed(0)
    edges = []
    for _ in range(4):
        widths = [CHOICES[int(torch.randint(0, len(CHOICES), (1,), generator=rng))] for _ in params]
        edges.append(Budget(sum(b * p for b, p in zip(widths, params)) / 8e6, "mb"))
    return edges + [Budget(v, "avg-bits") for v in (2.2, 3.0, 4.5, 7.9)]


# ------------------------------------------------------------------------------ hawq_v2
@pytest.fixture(scope="module")
def hawq(one_thread):
    return hawq_v2_objective(tiny_cnn(), tiny_batch(), CHOICES, seed=0)


def test_hawq_v2_objective_is_the_registered_baselines_score(hawq):
    model, batch = tiny_cnn(), tiny_batch()
    baseline = get_baseline("hawq_v2")
    ctx = BaselineContext(device=torch.device("cpu"), seed=0, act_bits=None, float_model=model)
    for widths in [(2, 3, 4, 8), (8, 8, 8, 8), (4, 2, 2, 3)]:
        bits = dict(zip(hawq.layers, widths))
        net = quantized_model(model, bits, act_bits=None)
        assert hawq.score(bits) == pytest.approx(baseline.fn(net, batch, bits, ctx), rel=1e-9)


def test_hawq_v2_allocation_is_the_brute_force_optimum_and_within_budget(hawq):
    params = [hawq.params[n] for n in hawq.layers]
    configs = list(itertools.product(CHOICES, repeat=len(params)))
    for budget in edge_budgets(params):
        cap = budget.cap(sum(params))
        alloc = allocate_hawq_v2(hawq, budget)
        assert alloc.size_bits <= cap and alloc.optimal
        best = max(hawq.score(dict(zip(hawq.layers, w))) for w in configs
                   if sum(b * p for b, p in zip(w, params)) <= cap)
        assert alloc.score == pytest.approx(best, rel=1e-9, abs=1e-15)


def test_hawq_v2_names_a_layer_whose_trace_is_not_positive(hawq):
    import dataclasses

    flipped = dataclasses.replace(hawq, traces={**hawq.traces, hawq.layers[0]: -1e-3})
    (warning,) = [w for w in flipped.warnings() if hawq.layers[0] in w]
    assert "-0.001" in warning and "rewards" in warning


# ------------------------------------------------------------------------- qloss-greedy
def test_calibration_loss_is_the_ptq_networks_cross_entropy():
    model, calib = tiny_cnn(), tiny_batch(16, seed=2)
    loss = CalibrationLoss(model, calib, act_bits=8)
    widths = (2, 4, 3, 8)
    net = quantized_model(model, dict(zip(loss.layers, widths)), act_bits=8, calib_inputs=calib.inputs)
    with torch.no_grad():
        expected = float(F.cross_entropy(net(calib.inputs), calib.labels))
    assert loss(widths) == expected and loss.evaluations == 1 and loss.seconds(widths) > 0


def test_qloss_greedy_never_exceeds_the_budget_and_is_deterministic():
    model, calib = tiny_cnn(), tiny_batch(16, seed=2)
    first, second = CalibrationLoss(model, calib, 8), CalibrationLoss(tiny_cnn(), calib, 8)
    params = [first.params[n] for n in first.layers]
    for budget in edge_budgets(params):
        a, b = allocate_qloss_greedy(first, CHOICES, budget), allocate_qloss_greedy(second, CHOICES, budget)
        assert a.size_bits <= budget.cap(sum(params)) and size_bits(a.bits, first.params) == a.size_bits
        assert a.bits == b.bits and a.score == b.score and a.evaluations == b.evaluations


def test_greedy_lowering_takes_the_least_loss_per_bit_saved_and_stops_once_within():
    # Layer 0 hurts 10 per step, layer 1 hurts 1 per step but is 4x larger: per bit saved, layer 1 is cheaper.
    params = [10, 40]
    def loss(w: tuple[int, ...]) -> float:
        return 10.0 * (3 - CHOICES.index(w[0])) + 1.0 * (3 - CHOICES.index(w[1]))

    widths, seen = greedy_lowering(loss, params, CHOICES, cap=8 * 10 + 4 * 40)
    assert widths == (8, 4) and seen[0] == (8, 8)
    widths, _ = greedy_lowering(loss, params, CHOICES, cap=8 * 10 + 8 * 40)
    assert widths == (8, 8)  # already within: nothing lowered


# ------------------------------------------------------------------------------ reading
def rows(budget: str, accs: dict[str, float]) -> list[SimpleNamespace]:
    return [SimpleNamespace(budget=budget, method=m, test_acc=a) for m, a in accs.items()]


def test_reading_names_every_method_that_beats_a_proxy_and_ignores_the_oracle():
    table = (rows("3 average bits", {"found": 0.9857, "hand": 0.9914, "qloss-greedy": 0.9900, "hawq": 0.98,
                                     "uniform": 0.9914, "reference": 0.999})
             + rows("5 average bits", {"found": 0.9971, "hand": 0.9971, "uniform": 0.99, "reference": 0.999}))
    text = "\n".join(reading(table, ["found"], ["3 average bits", "5 average bits"], test_images=700))
    assert "At 3 average bits, found (0.9857) ranks 4 of 5 methods" in text
    assert "below hand (0.9914, 4 more test images right), uniform (0.9914, 4 more test images right) and " \
           "qloss-greedy (0.9900, 3 more test images right)" in text
    assert "reference" not in text
    assert "At 5 average bits, found (0.9971) ranks 1 of 3 methods; no method beats it; level with hand." in text
    assert "found is beaten by at least one method at 1 of 2 budgets (3 average bits)" in text


def test_reading_counts_a_one_image_gap_in_the_singular():
    (line, _) = reading(rows("b", {"p": 0.5, "q": 0.5 + 1 / 697}), ["p"], ["b"], test_images=697)
    assert "q (0.5014, 1 more test image right)" in line


def test_standings_share_a_rank_between_tied_methods():
    (s,) = standings(rows("b", {"p": 0.5, "q": 0.7, "r": 0.7, "t": 0.5}), ["p"], ["b"])
    assert s.rank == 3 and [m for m, _ in s.above] == ["q", "r"] and s.level == ("t",)


# ------------------------------------------------------------------ comparison (mq-digits)
@needs_mq_digits
def test_compare_puts_hawq_v2_and_qloss_greedy_under_every_budget(monkeypatch):
    from emq.apply.mq import compare_mq
    from emq.bench.mq_digits import MQDigitsBenchmark
    from emq.proxy import Proxy

    bench = MQDigitsBenchmark()
    few, truth = bench.candidates()[:6], bench.ground_truth()["test_acc"][:6]
    # Six measured configurations keep the predictors' Kendall rows cheap; allocation is untouched by this.
    monkeypatch.setattr(bench, "candidates", lambda: list(few))
    monkeypatch.setattr(bench, "ground_truth", lambda: {"test_acc": truth.copy()})
    budgets = [Budget(7.9, "avg-bits"), Budget(7.5, "avg-bits")]
    result = compare_mq(bench, {"formula": Proxy.from_formula("n_neg(sum_layers(l2(quant_error)))")}, budgets,
                        baselines=("bparams",), random_configs=1, ga_too=False)
    for budget in budgets:
        mine = {r.method: r for r in result.rows if r.budget == budget.describe()}
        assert {"hawq_v2", "qloss-greedy"} <= mine.keys()
        for name in ("hawq_v2", "qloss-greedy"):
            assert mine[name].average_bits <= budget.value and 0 <= mine[name].test_acc <= 1
            assert mine[name].bits is not None and mine[name].seconds >= 0
    report = result.to_markdown("emq apply mq ...")
    assert "## Reading" in report and "At 7.5 average bits, formula" in report
    assert "| hawq_v2 |" in report and "| qloss-greedy |" in report
