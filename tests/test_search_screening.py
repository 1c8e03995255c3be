"""Screening rejects degenerate and failing programs before full scoring, each for the right reason."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from emq.proxy import Proxy
from primitives import OPS, Op, get_op
from emq.evaluate import StackedStats
from search.screening import (
    CONSTANT, INPUT_INDEPENDENT, MISSING_STAT, NONFINITE, TRIVIAL_EQUIVALENT, OVER_SIZE, OVER_TIME, SELF_CANCELLING, ScreenInputs,
    ScreenLimits, rejection_table, score_outcome, screen_and_score, screen_probe,
)
from search.synthetic import synthetic_problem


@pytest.fixture(scope="module")
def inputs() -> ScreenInputs:
    p = synthetic_problem(n_search=20, n_heldout=0, probe_size=8)
    return ScreenInputs.build(StackedStats(p.search), StackedStats(p.probe_other), p.probe_index)


def screen(formula: str, inputs: ScreenInputs, **limits) -> str | None:
    return screen_and_score(Proxy.from_formula(formula), inputs, ScreenLimits(**limits)).reason


def test_a_data_free_program_is_flagged_and_kept_unless_rejection_is_asked_for(inputs):
    # The published EMQ proxy reads no data; so does SynFlow, the best data-free family: flagged, not rejected.
    assert screen("sum_layers(numel(weight))", inputs) == CONSTANT  # all networks share one architecture here
    out = screen_and_score(Proxy.from_formula("sum_layers(sum(mul(bits, square(weight))))"), inputs)
    assert out.reason is None and out.detail["flags"] == [INPUT_INDEPENDENT] and out.scores is not None
    assert screen("sum_layers(sum(mul(bits, square(weight))))", inputs, reject_input_independent=True) == \
        INPUT_INDEPENDENT
    data_dependent = screen_and_score(Proxy.from_formula("sum_layers(l2(mul(grad, weight)))"), inputs)
    assert data_dependent.reason is None and "flags" not in data_dependent.detail


def test_size_count_over_varying_architectures_is_input_independent():
    from conftest import make_stats

    nets = [make_stats(i, layers=(("conv", (2 + i, 3, 3, 3)), ("fc", (10, 2 + i)))) for i in range(6)]
    other = []
    for i, net in enumerate(nets):  # same networks, a second batch: new gradients and activations
        fresh = make_stats(100 + i, layers=(("conv", (2 + i, 3, 3, 3)), ("fc", (10, 2 + i))))
        other.append(type(net)({k: {**d, "grad": fresh.layers[k]["grad"], "act": fresh.layers[k]["act"]}
                                for k, d in net.layers.items()}, net.params, net.flops))
    inputs = ScreenInputs.build(StackedStats(nets), StackedStats(other), list(range(6)))
    assert screen("sum_layers(numel(weight))", inputs, reject_input_independent=True) == INPUT_INDEPENDENT
    assert screen("sum_layers(numel(weight))", inputs, reject_input_independent=False) == TRIVIAL_EQUIVALENT  # #params
    assert screen("sum_layers(l2(mul(grad, weight)))", inputs, reject_input_independent=True) is None


def test_self_difference_is_rejected_as_self_cancelling_before_any_evaluation(inputs, monkeypatch):
    import search.screening as screening

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a self-cancelling program was evaluated")

    monkeypatch.setattr(screening, "evaluate_stacked", no_evaluation)
    out = screen_and_score(Proxy.from_formula("sum_layers(mean(sub(weight, weight)))"), inputs)
    assert out.reason == SELF_CANCELLING and out.detail["subterm"] == "sub(weight, weight)"


def test_constant_scores_are_rejected_as_constant(inputs):
    assert screen("sum_layers(numel(weight))", inputs) == CONSTANT


def test_probe_screen_then_full_scores_equal_screen_and_score(inputs):
    from emq.evaluate import evaluate_stacked

    for formula in ["sum_layers(s_mul(mean(hessian_diag), sum(square(quant_error))))", "sum_layers(numel(weight))",
                    "mean_layers(l2(mul(abs(grad), weight)))"]:
        proxy = Proxy.from_formula(formula)
        whole = screen_and_score(proxy, inputs)
        split = screen_probe(proxy, inputs.probe_inputs)
        if split.reason is None:  # what the search does: probe here, the search set in the pool
            split = score_outcome(split, *evaluate_stacked(proxy, inputs.search))
        assert split.reason == whole.reason
        assert (split.scores is None) == (whole.scores is None)
        if whole.scores is not None:
            assert (split.scores == whole.scores).all() and (split.probe == whole.probe).all()


def test_a_few_infinite_scores_rank_at_the_ends_but_nan_or_many_infinities_reject():
    # NASWOT's log|det K| is -inf on 3 of 1,000 NB201 search cells: the verdict ranks those last, so must the screen.
    from collections import Counter

    from emq.degeneracy import MAX_INF_SHARE, allowed_infinities
    from search.screening import _value_rejection

    scores = np.linspace(0.0, 1.0, 1000)
    few = scores.copy()
    few[[3, 500, 900]] = -np.inf
    assert _value_rejection(few, Counter({NONFINITE: 3})) is None
    many = scores.copy()
    many[: allowed_infinities(1000) + 1] = -np.inf
    assert allowed_infinities(1000) == int(MAX_INF_SHARE * 1000) and allowed_infinities(32) == 1
    assert _value_rejection(many, Counter({NONFINITE: allowed_infinities(1000) + 1})) == NONFINITE
    one_nan = scores.copy()
    one_nan[7] = np.nan
    assert _value_rejection(one_nan, Counter({NONFINITE: 1})) == NONFINITE
    assert _value_rejection(few, Counter({NONFINITE: 3, "op_error:logdet": 1})) == "op_error:logdet"
    assert _value_rejection(np.r_[np.full(40, 2.0), -np.inf], Counter({NONFINITE: 1})) is None  # one separated
    assert _value_rejection(np.full(40, 2.0), Counter()) == CONSTANT


def test_overflowing_program_is_rejected_as_nonfinite(inputs):
    assert screen("sum_layers(sum(cube(cube(cube(exp(grad))))))", inputs) == NONFINITE


def test_unknown_statistic_in_data_is_rejected_as_missing(inputs):
    assert screen("mean_layers(l2(virtual_grad))", inputs) == MISSING_STAT


def test_failing_op_is_rejected_with_the_op_name(inputs, monkeypatch):
    base = get_op("tanh")

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise FloatingPointError("broken on purpose")

    monkeypatch.setitem(OPS, "tanh", Op("tanh", broken, base.inputs, base.output, base.group, base.doc))
    assert screen("mean_layers(l2(tanh(grad)))", inputs) == "op_error:tanh"


def test_size_and_time_limits(inputs):
    formula = "mean_layers(l2(mul(abs(grad), hessian_diag)))"
    assert screen(formula, inputs, max_size=4) == OVER_SIZE
    assert screen(formula, inputs, time_budget_s=0.0) == OVER_TIME


def test_healthy_program_passes_with_scores_and_probe_behaviour(inputs):
    out = screen_and_score(Proxy.from_formula("sum_layers(s_mul(mean(hessian_diag), sum(square(quant_error))))"), inputs)
    assert out.ok
    assert out.scores.shape == (inputs.search.n,)
    assert out.probe.shape == (len(inputs.probe_index),)
    torch.testing.assert_close(torch.as_tensor(out.probe), torch.as_tensor(out.scores[inputs.probe_index]))


def test_input_independence_screen_can_be_switched_off(inputs):
    assert screen("sum_layers(sum(mul(bits, square(weight))))", inputs, reject_input_independent=False) is None


def test_rejection_table_lists_most_frequent_first():
    assert rejection_table({"constant": 2, "nonfinite": 5}) == "nonfinite: 5\nconstant: 2"


def test_without_second_batch_the_independence_screen_is_skipped():
    p = synthetic_problem(n_search=12, n_heldout=0, probe_size=6)
    inputs = ScreenInputs.build(StackedStats(p.search), None, p.probe_index)
    assert screen("sum_layers(sum(mul(bits, square(weight))))", inputs) is None


def test_size_count_that_moves_with_the_batch_is_rejected_as_trivial_equivalent():
    from conftest import make_stats
    from search.screening import TRIVIAL_EQUIVALENT

    shapes = [(("conv", (2 + i, 3, 3, 3)), ("fc", (10, 2 + i))) for i in range(8)]
    nets = [make_stats(i, layers=shapes[i]) for i in range(8)]
    other = [make_stats(100 + i, layers=shapes[i]) for i in range(8)]
    inputs = ScreenInputs.build(StackedStats(nets), StackedStats(other), list(range(8)))
    # sigmoid(grad) ~ 0.5 everywhere: its norm is half the square root of the size, whatever the batch
    outcome = screen_and_score(Proxy.from_formula("sum_layers(l2(sigmoid(grad)))"), inputs, ScreenLimits())
    assert outcome.reason == TRIVIAL_EQUIVALENT and outcome.detail["trivial"] == "params"
    assert screen("sum_layers(l2(sigmoid(grad)))", inputs, trivial_tau_limit=1.0) is None
    assert list(inputs.probe_trivial["params"]) == [sum(net.params.values()) for net in nets]


def test_program_that_reduces_to_the_quantized_loss_is_rejected_naming_it():
    # An MQ program whose probe ranking is a monotone function of a trivial predictor adds nothing to it. The
    # predictor is computed here from the raw statistics (not from the program's scores), so a screen that
    # compared the wrong values, or none, would let the program through.
    from search.screening import TRIVIAL_EQUIVALENT

    p = synthetic_problem(n_search=20, n_heldout=0, probe_size=8)
    probe_nets = [p.search[i] for i in p.probe_index]
    energy = np.array([np.mean([float(torch.mean(d["grad"].float() ** 2)) for d in net.layers.values()])
                       for net in probe_nets])
    assert np.unique(energy).size == len(energy)

    def screened(program: str, trivial: np.ndarray, **limits):
        inputs = ScreenInputs.build(StackedStats(p.search), StackedStats(p.probe_other), p.probe_index,
                                    probe_trivial={"qloss": trivial})
        return screen_and_score(Proxy.from_formula(program), inputs, ScreenLimits(**limits))

    program = "n_log(mean_layers(mean(square(grad))))"
    outcome = screened(program, -2.0 * energy + 1.0)
    assert outcome.reason == TRIVIAL_EQUIVALENT and outcome.detail["trivial"] == "qloss"
    assert screened(program, -2.0 * energy + 1.0, trivial_tau_limit=1.0).reason is None
    unrelated = np.random.default_rng(0).permutation(len(energy)).astype(float)
    assert screened(program, unrelated).reason is None


def test_program_that_is_a_function_of_one_hyperparameter_is_rejected(inputs):
    # The old vit-digits winner took one value per embedding width: here, scores constant within `width` groups.
    from search.screening import TRIVIAL_EQUIVALENT

    program = Proxy.from_formula("min_layers(mean(log_softmax_last(grad)))")
    probe = screen_and_score(program, inputs, ScreenLimits()).probe
    order = probe.argsort()
    width = torch.zeros(len(probe))
    width[order[len(probe) // 2:]] = 1.0  # two groups, split at the median: ranks are NOT constant within them
    grouped = ScreenInputs.build(inputs.search, inputs.probe_other, inputs.probe_index,
                                 probe_features={"arch:width": width.numpy()})
    assert screen_and_score(program, grouped, ScreenLimits()).reason is None  # correlated, not a function
    assert screen_and_score(program, grouped, ScreenLimits(arch_eta_limit=0.7)).reason == TRIVIAL_EQUIVALENT
