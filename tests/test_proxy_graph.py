"""Proxy.to_networkx: the program as a DAG with one node per distinct subexpression."""
from __future__ import annotations

import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emq.known.library import known_proxies
from emq.proxy import Proxy
from primitives import get_op
from search.generate import Grammar, random_program

STATS = ["act", "grad", "weight", "virtual_grad"]


def distinct_subexpressions(proxy: Proxy) -> set[str]:
    """Canonical texts of every subtree, found by walking the tree (not through the graph)."""
    return {node.canonical() for _, node in proxy.root.walk()}


def test_synflow_is_a_chain_from_two_statistics_to_its_score():
    graph = known_proxies()["synflow"].proxy.to_networkx()
    product = "mul(virtual_grad, weight)"
    root = f"sum_layers(sum(abs({product})))"
    assert graph.graph["root"] == root
    assert dict(graph.nodes(data=True)) == {
        "weight": {"kind": "stat", "name": "weight", "type": "T"},
        "virtual_grad": {"kind": "stat", "name": "virtual_grad", "type": "T"},
        product: {"kind": "op", "name": "mul", "type": "T"},
        f"abs({product})": {"kind": "op", "name": "abs", "type": "T"},
        f"sum(abs({product}))": {"kind": "op", "name": "sum", "type": "S"},
        root: {"kind": "op", "name": "sum_layers", "type": "N"},
    }
    assert {(a, b): d["positions"] for a, b, d in graph.edges(data=True)} == {
        ("virtual_grad", product): (0,),  # mul is commutative: arguments in canonical (sorted) order
        ("weight", product): (1,),
        (product, f"abs({product})"): (0,),
        (f"abs({product})", f"sum(abs({product}))"): (0,),
        (f"sum(abs({product}))", root): (0,),
    }


def test_a_subexpression_used_twice_is_one_node_with_two_consumers():
    graph = Proxy.from_formula("n_add(sum_layers(l2(grad)), mean_layers(l2(grad)))").to_networkx()
    assert graph.number_of_nodes() == 5
    assert sorted(graph.successors("l2(grad)")) == ["mean_layers(l2(grad))", "sum_layers(l2(grad))"]


def test_commuted_copies_are_one_node_filling_both_argument_positions():
    graph = Proxy.from_formula("mean_layers(l2(add(mul(weight, grad), mul(grad, weight))))").to_networkx()
    assert graph.number_of_nodes() == 6
    assert graph.edges["mul(grad, weight)", "add(mul(grad, weight), mul(grad, weight))"]["positions"] == (0, 1)


def test_a_non_commutative_op_keeps_its_argument_order():
    graph = Proxy.from_formula("mean_layers(l2(sub(weight, grad)))").to_networkx()
    assert graph.edges["weight", "sub(weight, grad)"]["positions"] == (0,)
    assert graph.edges["grad", "sub(weight, grad)"]["positions"] == (1,)


def test_programs_equal_up_to_argument_order_give_equal_graphs():
    a = Proxy.from_formula("sum_layers(mean(mul(weight, grad)))").to_networkx()
    b = Proxy.from_formula("sum_layers(mean(mul(grad, weight)))").to_networkx()
    assert nx.utils.graphs_equal(a, b)
    assert sorted(a.edges(data="positions")) == sorted(b.edges(data="positions"))


def assert_well_formed(proxy: Proxy) -> None:
    graph = proxy.to_networkx()
    assert set(graph.nodes) == distinct_subexpressions(proxy)
    assert nx.is_directed_acyclic_graph(graph)
    sinks = [n for n in graph if graph.out_degree(n) == 0]
    assert sinks == [graph.graph["root"]] == [proxy.root.canonical()]
    sources = {n for n in graph if graph.in_degree(n) == 0}
    assert sources == {n for n, kind in graph.nodes(data="kind") if kind == "stat"} == proxy.stats_needed
    for key, data in graph.nodes(data=True):
        if data["kind"] == "op":
            op = get_op(data["name"])
            assert data["type"] == op.output.value
            filled = sorted(p for _, _, ps in graph.in_edges(key, data="positions") for p in ps)
            assert filled == list(range(op.arity))  # every argument slot filled exactly once


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_programs_give_one_node_per_distinct_subexpression_and_one_sink(seed):
    assert_well_formed(Proxy(random_program(random.Random(seed), Grammar(STATS))))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_a_program_reusing_its_own_subtree_shares_nodes(seed):
    rng = random.Random(seed)
    inner = Proxy(random_program(rng, Grammar(STATS))).root
    proxy = Proxy.from_formula(f"n_add({inner.formula()}, n_neg({inner.formula()}))")
    assert_well_formed(proxy)
    graph = proxy.to_networkx()
    assert graph.number_of_nodes() == len(distinct_subexpressions(Proxy(inner))) + 2
    assert graph.out_degree(inner.canonical()) == 2


@pytest.mark.parametrize("name", sorted(known_proxies()))
def test_every_known_proxy_is_a_well_formed_dag(name):
    assert_well_formed(known_proxies()[name].proxy)
