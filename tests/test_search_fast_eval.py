"""The one evaluator (stacked, vmapped) gives the scores and failures of the definition: a plain per-network recursion."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.func import vmap

from conftest import make_stats
from emq.proxy import Proxy
from primitives import OPS, Kind, Op, get_op, list_ops
from emq.evaluate import StackedStats, evaluate_stacked
from search.generate import Grammar, random_program
from search.synthetic import synthetic_problem


def _coverage_formulas() -> list[str]:
    """One well-conditioned formula per registered op."""
    out = []
    for op in list_ops():
        if op.group == "matrix":  # square inputs from gram; a non-square one is refused (op_error), tested too
            out += [f"sum_layers(mean({op.name}(gram(act))))" if op.output == Kind.T else
                    f"sum_layers({op.name}(gram(act)))", f"sum_layers(mean({op.name}(grad)))" if op.output == Kind.T
                    else f"sum_layers({op.name}(grad))"]
        elif op.is_cross_layer:  # 0-d params agree in shape across layers; grad does not (op_error)
            out += [f"mean_layers(l2(mul(grad, {op.name}(params))))", f"sum_layers(l2({op.name}(grad)))",
                    f"sum_layers(logdet(gram({op.name}(params))))"]
        elif op.is_population and op.arity == 1:
            out.append(f"n_add({op.name}(mean_layers(l2(grad))), sum_layers(l2(grad)))")
        elif op.group == "unary":
            out.append(f"mean_layers(mean({op.name}(grad)))")
        elif op.group == "binary":
            out += [f"mean_layers(mean({op.name}(grad, weight)))", f"mean_layers(mean({op.name}(act, grad)))",
                    f"mean_layers(l2({op.name}(params, grad)))"]
        elif op.inputs == (Kind.T,) and op.output == Kind.S:
            out.append(f"sum_layers({op.name}(grad))")
        elif op.inputs == (Kind.S,) and op.output == Kind.S:
            out.append(f"mean_layers({op.name}(l2(grad)))")
        elif op.inputs == (Kind.S, Kind.S):
            out.append(f"mean_layers({op.name}(l2(grad), mean(act)))")
        elif op.is_aggregation:
            out.append(f"{op.name}(l2(grad))")
        elif op.inputs == (Kind.N,):
            out.append(f"{op.name}(mean_layers(l2(grad)))")
        elif op.inputs == (Kind.N, Kind.N):
            out.append(f"{op.name}(sum_layers(l2(grad)), mean_layers(std(act)))")
    return out


def reference_scores(proxy: Proxy, stats_list, dtype=torch.float32):
    """Return (scores, failures) by the definition of a program: per network, per layer, then over layers.

    Written independently of emq.evaluate (no stacking, no vmap), as the oracle it is tested against.
    """
    def apply(op, *args):
        try:
            out = op.fn(*args)
        except Exception:
            raise LookupError(f"op_error:{op.name}") from None
        if op.output != Kind.T and not op.is_population and out.numel() != 1:
            raise LookupError(f"shape:{op.name}")
        return out

    def one_network(root, stats):
        """The score of a program without population ops on one network (LookupError: its failure reason)."""
        needed = root.stats()
        layers = [name for name, d in stats.layers.items() if needed <= d.keys()]

        def per_layer(node, layer):
            if node.is_leaf:
                return stats.layers[layer][node.name].to(dtype)
            op = get_op(node.name)
            if op.is_cross_layer:  # the same network-wide value in every layer
                return apply(op, [per_layer(node.children[0], other) for other in layers])
            return apply(op, *[per_layer(c, layer) for c in node.children])

        def network(node):
            op = get_op(node.name)
            if op.is_aggregation:
                values = torch.stack([per_layer(node.children[0], layer).reshape(()) for layer in layers])
                params = torch.tensor([float(stats.params.get(layer, 0)) for layer in layers], dtype=dtype)
                return apply(op, values, params)
            return apply(op, *[network(c) for c in node.children])

        if not layers:
            raise LookupError("missing_stat")
        return float(network(root))

    def all_networks(node):
        """Scores and failure reasons of subprogram `node` on every network; population ops see the whole vector."""
        op = None if node.is_leaf else get_op(node.name)
        if op is not None and op.is_population:
            parts = [all_networks(c) for c in node.children]
            values = op.fn(*[torch.tensor(v, dtype=torch.float64) for v, _ in parts]).numpy()
            reasons = [next((r[i] for _, r in parts if r[i] is not None), None) for i in range(len(stats_list))]
            return values, reasons
        if op is not None and node.kind == Kind.N and any(get_op(n.name).is_population for n in node.unique()
                                                          if not n.is_leaf):
            parts = [all_networks(c) for c in node.children]
            values = op.fn(*[torch.tensor(v, dtype=torch.float64) for v, _ in parts]).numpy()
            reasons = [next((r[i] for _, r in parts if r[i] is not None), None) for i in range(len(stats_list))]
            return values, reasons
        values, reasons = [], []
        for stats in stats_list:
            try:
                values.append(one_network(node, stats))
                reasons.append(None)
            except LookupError as err:
                values.append(np.nan)
                reasons.append(str(err.args[0]))
        return np.array(values), reasons

    scores, reasons = all_networks(proxy.root)
    failures = Counter(r for r in reasons if r is not None)
    failures["nonfinite"] += int(sum(1 for v, r in zip(scores, reasons) if r is None and not np.isfinite(v)))
    scores = np.where([r is None for r in reasons], scores, np.nan)
    return np.asarray(scores, dtype=np.float64), +failures


@pytest.fixture(scope="module")
def networks():
    return [make_stats(i) for i in range(9)]


@pytest.mark.parametrize("formula", _coverage_formulas())
def test_every_op_matches_the_definition(formula, networks):
    proxy = Proxy.from_formula(formula)
    expected, expected_fail = reference_scores(proxy, networks)
    got, fail = evaluate_stacked(proxy, StackedStats(networks))
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
    assert fail == expected_fail


def test_random_programs_match_in_float64():
    problem = synthetic_problem(n_search=10, n_heldout=0, probe_size=3)
    stacked = StackedStats(problem.search)
    grammar = Grammar(sorted(problem.search[0].available()))
    rng = random.Random(0)
    agree = 0
    trials = 150
    for _ in range(trials):
        proxy = Proxy(random_program(rng, grammar))
        expected, _ = reference_scores(proxy, problem.search, torch.float64)
        got, _ = evaluate_stacked(proxy, stacked, torch.float64)
        agree += np.allclose(got, expected, rtol=1e-6, atol=1e-9, equal_nan=True)
    # Differences left are catastrophic cancellations (x - x with x ~ 1e16) whose rounding depends on order.
    assert agree >= 0.97 * trials


@pytest.mark.parametrize("name", sorted({op.name for op in list_ops() if op.elementwise}))
def test_elementwise_ops_equal_their_vmapped_form(name):
    op = get_op(name)
    g = torch.Generator().manual_seed(0)
    shape = (5, 3, 2) if op.inputs[0] == Kind.T else (5,)
    args = [torch.randn(shape, generator=g) for _ in op.inputs]
    torch.testing.assert_close(op.fn(*args), vmap(op.fn)(*args))


def test_shared_statistics_stay_unstacked_and_give_constant_scores():
    problem = synthetic_problem(n_search=6, n_heldout=0, probe_size=3)
    stacked = StackedStats(problem.search)
    (block,) = stacked.blocks
    conv1 = next(col for col in block.columns if col.name == "conv1")
    assert conv1.tensors["weight"][1] is False  # one weight tensor shared by every network
    assert conv1.tensors["bits"][1] is True
    scores, fail = evaluate_stacked(Proxy.from_formula("sum_layers(numel(weight))"), stacked)
    assert not fail and np.ptp(scores) == 0


def test_missing_statistic_fails_every_network_with_its_reason(networks):
    proxy = Proxy.from_formula("mean_layers(l2(virtual_grad))")
    scores, fail = evaluate_stacked(proxy, StackedStats(networks))
    assert np.isnan(scores).all() and fail == Counter({"missing_stat": len(networks)})
    assert reference_scores(proxy, networks)[1] == fail


def test_op_error_on_some_networks_is_counted_per_network(monkeypatch, networks):
    base = get_op("neg")

    def picky(x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 0 and float(x.reshape(-1)[0]) > 0:  # data-dependent: fails under vmap and for some networks
            raise ValueError("positive first entry")
        return -x

    monkeypatch.setitem(OPS, "neg", Op("neg", picky, base.inputs, base.output, base.group, base.doc))
    proxy = Proxy.from_formula("mean_layers(l2(neg(grad)))")
    expected, expected_fail = reference_scores(proxy, networks)
    got, fail = evaluate_stacked(proxy, StackedStats(networks))
    assert 0 < sum(fail.values()) < len(networks)
    assert fail == expected_fail
    np.testing.assert_allclose(got, expected, rtol=1e-5, equal_nan=True)


def test_networks_of_different_layouts_share_the_columns_of_common_layers(networks):
    other = make_stats(1, layers=(("conv", (2, 3, 3, 3)), ("fc", (10, 2)), ("head", (3, 10))))
    mixed = networks[:3] + [other] + networks[3:5]
    stacked = StackedStats(mixed)
    (block,) = stacked.blocks
    assert len(block.columns) == len(networks[0].layers) + 3
    assert max(len(col.members) for col in block.columns) == 5
    for formula in ("sum_layers(l2(mul(grad, weight)))", "std_layers(mean(act))", "wmean_layers(max(grad))"):
        proxy = Proxy.from_formula(formula)
        got, fail = evaluate_stacked(proxy, stacked)
        expected, expected_fail = reference_scores(proxy, mixed)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        assert fail == expected_fail


def test_subset_and_small_chunks_give_the_same_scores(networks):
    proxy = Proxy.from_formula("wmean_layers(s_log(var(sub(grad, act))))")
    full = StackedStats(networks)
    chunked = StackedStats(networks, chunk_elements=1)
    np.testing.assert_allclose(evaluate_stacked(proxy, chunked)[0], evaluate_stacked(proxy, full)[0], rtol=1e-6)
    np.testing.assert_allclose(evaluate_stacked(proxy, full.subset([4, 1]))[0],
                               evaluate_stacked(proxy, full)[0][[4, 1]], rtol=1e-6)


def test_evaluation_never_modifies_the_statistics(networks):
    before = [{k: {s: t.clone() for s, t in d.items()} for k, d in n.layers.items()} for n in networks]
    evaluate_stacked(Proxy.from_formula("mean_layers(l2(zscore(mul(grad, weight))))"), StackedStats(networks))
    for net, old in zip(networks, before):
        for layer, d in old.items():
            for s, t in d.items():
                assert torch.equal(net.layers[layer][s], t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: GPU scores are compared with CPU scores")
def test_gpu_scores_equal_cpu_scores(networks):
    cpu, gpu = StackedStats(networks), StackedStats(networks, device="cuda")
    for formula in _coverage_formulas():
        proxy = Proxy.from_formula(formula)
        a, fa = evaluate_stacked(proxy, cpu)
        b, fb = evaluate_stacked(proxy, gpu)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=formula)
        assert fa == fb
