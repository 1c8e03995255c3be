"""The population's common subexpressions, logged per generation."""
from __future__ import annotations

from emq.proxy import Proxy
from search.subexpressions import common_subexpressions


def proxies(*formulas: str) -> list[Proxy]:
    return [Proxy.from_formula(f) for f in formulas]


def test_counts_op_subexpressions_found_in_two_or_more_programs():
    row = common_subexpressions(proxies("sum_layers(l2(grad))", "mean_layers(l2(grad))", "mean_layers(l1(weight))"))
    assert row == {"shared_subexpressions": 1, "top_subexpression": {"formula": "l2(grad)", "programs": 2}}


def test_commuted_arguments_are_the_same_subexpression():
    row = common_subexpressions(proxies("sum_layers(l2(mul(grad, weight)))", "mean_layers(sum(mul(weight, grad)))"))
    assert row["top_subexpression"] == {"formula": "mul(grad, weight)", "programs": 2}


def test_a_program_counts_once_however_often_it_uses_a_subexpression():
    row = common_subexpressions(proxies("n_add(sum_layers(l2(grad)), mean_layers(l2(grad)))", "max_layers(l1(act))"))
    assert row == {"shared_subexpressions": 0, "top_subexpression": None}


def test_ties_go_to_the_longer_subexpression_whatever_the_order():
    formulas = ["sum_layers(sum(abs(grad)))", "mean_layers(sum(abs(grad)))"]
    expected = {"shared_subexpressions": 2, "top_subexpression": {"formula": "sum(abs(grad))", "programs": 2}}
    assert common_subexpressions(proxies(*formulas)) == expected
    assert common_subexpressions(proxies(*reversed(formulas))) == expected


def test_an_empty_population_shares_nothing():
    assert common_subexpressions([]) == {"shared_subexpressions": 0, "top_subexpression": None}
