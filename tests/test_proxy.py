"""Proxy programs: parsing, typing, JSON round trip, hashing, evaluation."""
from __future__ import annotations

import json

import pytest
import torch

from emq.proxy import FORMAT, MissingStatError, Proxy, ProxyFormatError
from tests.conftest import make_stats


def test_formula_round_trips_through_text():
    text = "mean_layers(l2(mul(abs(grad), weight)))"
    assert Proxy.from_formula(text).formula() == text


def test_json_round_trip_keeps_formula_hash_and_scores(tmp_path, stats):
    proxy = Proxy.from_formula("n_add(sum_layers(l1(weight)), mean_layers(s_log(l2(grad))))", meta={"note": "x"})
    path = proxy.save(tmp_path / "p.json")
    back = Proxy.load(path)
    assert back.formula() == proxy.formula()
    assert back.canonical_hash() == proxy.canonical_hash()
    assert back.meta == {"note": "x"}
    assert back.evaluate(stats) == pytest.approx(proxy.evaluate(stats))
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["stats"] == ["grad", "weight"]
    assert all("op" in n or "stat" in n for n in data["nodes"])


def test_commutative_argument_order_gives_same_hash():
    a = Proxy.from_formula("sum_layers(mean(mul(weight, grad)))")
    b = Proxy.from_formula("sum_layers(mean(mul(grad, weight)))")
    c = Proxy.from_formula("sum_layers(mean(sub(weight, grad)))")
    d = Proxy.from_formula("sum_layers(mean(sub(grad, weight)))")
    assert a.canonical_hash() == b.canonical_hash()
    assert c.canonical_hash() != d.canonical_hash()


def test_evaluate_matches_hand_computation(stats):
    proxy = Proxy.from_formula("sum_layers(sum(abs(mul(weight, grad))))")
    expected = sum(float((s["weight"] * s["grad"]).abs().sum()) for s in stats.layers.values())
    assert proxy.evaluate(stats) == pytest.approx(expected, rel=1e-5)


def test_weighted_aggregation_uses_layer_params(stats):
    proxy = Proxy.from_formula("wmean_layers(mean(weight))")
    means = torch.tensor([float(s["weight"].mean()) for s in stats.layers.values()], dtype=torch.float64)
    p = stats.param_vector()
    assert proxy.evaluate(stats) == pytest.approx(float((means * p).sum() / p.sum()), rel=1e-5)


def test_evaluation_never_mutates_statistics(stats):
    before = {l: {k: v.clone() for k, v in s.items()} for l, s in stats.layers.items()}
    for text in ["sum_layers(sum(neg(weight)))", "mean_layers(l2(zscore(grad)))", "sum_layers(mean(softmax_last(act)))"]:
        Proxy.from_formula(text).evaluate(stats)
    for layer, s in stats.layers.items():
        for k, v in s.items():
            assert torch.equal(v, before[layer][k]), (layer, k)


def test_shared_subexpression_in_json_is_evaluated_once_per_layer(stats):
    data = {"format": FORMAT, "output": 3, "nodes": [
        {"id": 0, "stat": "weight"}, {"id": 1, "op": "mul", "inputs": [0, 0]},
        {"id": 2, "op": "sum", "inputs": [1]}, {"id": 3, "op": "sum_layers", "inputs": [2]}]}
    proxy = Proxy.from_json(data)
    assert proxy.formula() == "sum_layers(sum(mul(weight, weight)))"
    expected = sum(float((s["weight"] ** 2).sum()) for s in stats.layers.values())
    assert proxy.evaluate(stats) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("text, message", [
    ("mean_layers(frobnicate(weight))", "unknown op 'frobnicate'"),
    ("mean_layers(l2(nonsense_stat))", "unknown statistic 'nonsense_stat'"),
    ("mean_layers(weight)", "receives (T)"),
    ("l2(weight)", "must end in N"),
    ("mean_layers(l2(weight, grad))", "takes 1 input"),
    ("mean_layers(l2(weight)", "column"),
    ("", "empty formula"),
])
def test_bad_formulas_fail_with_a_message_naming_the_problem(text, message):
    with pytest.raises(ProxyFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Proxy.from_formula(text)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"format": "other/1"}', "field 'format'"),
    ('{"format": "emq-proxy/1", "nodes": []}', "field 'nodes'"),
    ('{"format": "emq-proxy/1", "output": 1, "nodes": [{"id": 0, "stat": "weight"}, {"id": 1, "op": "sum_layers", "inputs": [7]}]}',
     "unknown node id 7"),
    ('{"format": "emq-proxy/1", "output": 0, "nodes": [{"id": 0, "stat": "weight"}, {"id": 0, "stat": "grad"}]}', "duplicate node id"),
])
def test_malformed_proxy_files_name_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ProxyFormatError) as err:
        Proxy.load(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_proxy_file_is_a_clear_error(tmp_path):
    with pytest.raises(ProxyFormatError, match="no such proxy file"):
        Proxy.load(tmp_path / "absent.json")


def test_missing_statistic_names_it(stats):
    proxy = Proxy.from_formula("sum_layers(l2(hessian_diag))")
    with pytest.raises(MissingStatError, match="hessian_diag"):
        proxy.evaluate(stats)


def test_scores_differ_between_networks():
    proxy = Proxy.from_formula("sum_layers(l2(grad))")
    assert proxy.evaluate(make_stats(0)) != proxy.evaluate(make_stats(1))
