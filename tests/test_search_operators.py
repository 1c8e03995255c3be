"""Typed program generation and variation: every program the search makes is well typed and within limits."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emq.proxy import Proxy, ProxyFormatError
from emq.stats import BASE_STATS, BIT_STATS
from primitives import Kind
from search.generate import Grammar, GrowConfig, minimal, random_program
from emq.program import parse_formula
from search.operators import MUTATORS, Limits, crossover, mutate, program

GRAMMAR = Grammar(BASE_STATS + BIT_STATS)
LIMITS = Limits(max_size=20, max_depth=7)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _valid(tree) -> Proxy:
    """The program survives a round trip through its formula and its JSON (both re-validate the types)."""
    proxy = tree if isinstance(tree, Proxy) else Proxy(tree)
    back = Proxy.from_formula(proxy.formula())
    assert back == proxy and back.size == proxy.size
    assert Proxy.from_json(proxy.to_json()).canonical_hash() == proxy.canonical_hash()
    return proxy


@settings(max_examples=150, deadline=None)
@given(seeds)
def test_random_programs_validate_and_fit_limits(seed):
    tree = random_program(random.Random(seed), GRAMMAR)
    _valid(tree)
    assert tree.kind == Kind.N
    assert LIMITS.fits(tree)


@settings(max_examples=150, deadline=None)
@given(seeds, st.integers(min_value=1, max_value=4))
def test_mutation_chains_never_produce_ill_typed_programs(seed, steps):
    rng = random.Random(seed)
    proxy = program(random_program(rng, GRAMMAR))
    for _ in range(steps):
        proxy, _name = mutate(proxy, rng, GRAMMAR, LIMITS)
        _valid(proxy)
        assert LIMITS.fits(proxy.root)
        assert proxy.simplified() is proxy  # the search only ever holds simplified programs


@settings(max_examples=150, deadline=None)
@given(seeds)
def test_crossover_children_are_well_typed_and_within_limits(seed):
    rng = random.Random(seed)
    a, b = program(random_program(rng, GRAMMAR)), program(random_program(rng, GRAMMAR))
    for child in crossover(a, b, rng, LIMITS):
        _valid(child)
        assert LIMITS.fits(child.root)


@settings(max_examples=60, deadline=None)
@given(seeds, st.sampled_from(sorted(MUTATORS)))
def test_each_mutator_keeps_types(seed, name):
    rng = random.Random(seed)
    tree = random_program(rng, GRAMMAR)
    child = MUTATORS[name](tree, rng, GRAMMAR, LIMITS)
    if child is not None:
        _valid(child)


def test_size_limit_returns_parent_when_no_variant_fits():
    proxy = Proxy.from_formula("mean_layers(l2(mul(abs(grad), weight)))")
    tight = Limits(max_size=proxy.size, max_depth=proxy.depth)
    rng = random.Random(0)
    for _ in range(30):
        child, _ = mutate(proxy, rng, GRAMMAR, tight)
        assert tight.fits(child.root)


def test_tree_round_trips_through_formula_and_proxy():
    text = "n_add(mean_layers(l2(mul(abs(grad), weight))), sum_layers(s_log(mean(hessian_diag))))"
    tree = parse_formula(text)
    assert tree.formula() == text
    assert Proxy.from_formula(text).root == tree
    assert tree.size == Proxy.from_formula(text).size == 11


def test_canonical_hash_ignores_commutative_argument_order():
    a = Proxy.from_formula("mean_layers(l2(mul(grad, weight)))")
    b = Proxy.from_formula("mean_layers(l2(mul(weight, grad)))")
    assert a.canonical_hash() == b.canonical_hash()
    assert a.canonical_hash() != Proxy.from_formula("mean_layers(l2(div(grad, weight)))").canonical_hash()


def test_parser_rejects_ill_typed_formula():
    with pytest.raises(ProxyFormatError):
        parse_formula("mean_layers(weight)")
    with pytest.raises(ProxyFormatError):
        parse_formula("mean_layers(l2(nosuchstat))")


def test_generation_uses_only_given_statistics_and_respects_zero_weights():
    grammar = Grammar(["weight", "grad"], GrowConfig(op_weights={"abs": 0.0}))
    rng = random.Random(3)
    for _ in range(200):
        tree = random_program(rng, grammar)
        assert tree.stats() <= {"weight", "grad"}
        assert all(node.name != "abs" for _, node in tree.walk())


def test_minimal_program_is_aggregation_of_reduction_of_stat():
    tree = minimal(random.Random(0), GRAMMAR, Kind.N)
    assert tree.size == 3 and tree.depth == 3
    _valid(tree)
