"""The subprogram memo (emq.subprogram_memo) and 16-bit stacking: the scores and failures of the plain evaluator."""
from __future__ import annotations

import random

import numpy as np
import torch

from conftest import make_stats
from emq.evaluate import StackedStats, evaluate_stacked
from emq.proxy import Proxy
from emq.subprogram_memo import SubprogramMemo
from search.generate import Grammar, random_program
from search.operators import Limits, crossover, mutate, program

LAYERS = (("conv", (8, 4, 3, 3)), ("conv2", (8, 4, 3, 3)), ("fc", (10, 8)))


def _stats(n: int = 12) -> list:
    return [make_stats(seed, LAYERS) for seed in range(n)]


def _both(programs: list[Proxy], stats_list: list) -> tuple[list, list, StackedStats]:
    plain = StackedStats(stats_list, block=4)
    memo = StackedStats(stats_list, block=4).enable_memo()
    return ([evaluate_stacked(p, plain) for p in programs], [evaluate_stacked(p, memo) for p in programs], memo)


def test_parent_and_children_score_the_same_with_the_memo_and_reuse_it():
    rng = random.Random(3)
    grammar = Grammar(["weight", "grad", "act", "params"])
    parents = [program(random_program(rng, grammar)) for _ in range(12)]
    children = [mutate(p, rng, grammar, Limits())[0] for p in parents for _ in range(2)]
    children += [c for a, b in zip(parents[::2], parents[1::2]) for c in crossover(a, b, rng, Limits())]
    programs = parents + children
    plain, memo, stacked = _both(programs, _stats())
    for p, (s0, f0), (s1, f1) in zip(programs, plain, memo):
        assert np.array_equal(s0, s1, equal_nan=True), p.formula()
        assert f0 == f1, p.formula()
    assert stacked.memo.hits > 0


def test_a_repeated_subprogram_is_read_back_not_recomputed():
    stats_list = _stats()
    stacked = StackedStats(stats_list, block=4).enable_memo()
    evaluate_stacked(Proxy.from_formula("sum_layers(l1(mul(grad, weight)))"), stacked)
    hits = stacked.memo.hits
    scores, _ = evaluate_stacked(Proxy.from_formula("n_log(sum_layers(l1(mul(grad, weight))))"), stacked)
    assert stacked.memo.hits > hits
    expected, _ = evaluate_stacked(Proxy.from_formula("n_log(sum_layers(l1(mul(grad, weight))))"),
                                   StackedStats(stats_list, block=4))
    assert np.array_equal(scores, expected, equal_nan=True)


def test_a_failure_is_never_hidden_by_a_memo_hit():
    stats_list = _stats()
    # eig_max needs a square matrix: the 8 x 4 x 3 x 3 convolution weights fail (op_error), fc fails too
    formula = "sum_layers(eig_max(weight))"
    stacked = StackedStats(stats_list, block=4).enable_memo()
    first = evaluate_stacked(Proxy.from_formula(formula), stacked)
    second = evaluate_stacked(Proxy.from_formula(formula), stacked)
    plain = evaluate_stacked(Proxy.from_formula(formula), StackedStats(stats_list, block=4))
    assert first[1] == second[1] == plain[1] and sum(plain[1].values()) > 0


def test_pieces_share_one_memo_each_under_its_own_scope():
    stats_list = _stats()
    shared = SubprogramMemo()
    pieces = [StackedStats(stats_list[a:a + 4], block=4).enable_memo(shared, a) for a in (0, 4, 8)]
    proxy = Proxy.from_formula("sum_layers(l1(mul(grad, weight)))")
    first = [evaluate_stacked(proxy, pieces[0])[0]]
    per_piece = len(shared)  # one entry per stack of same-shaped layers
    first += [evaluate_stacked(proxy, p)[0] for p in pieces[1:]]
    assert shared.hits == 0 and len(shared) == 3 * per_piece  # same block position in each: no mix-up
    again = [evaluate_stacked(proxy, p)[0] for p in pieces]
    assert shared.hits == 3 * per_piece and all(np.array_equal(x, y) for x, y in zip(first, again))
    sketched = pieces[0].with_sketch(16)
    assert sketched.memo is shared and sketched.memo_scope != pieces[0].memo_scope


def test_values_are_reused_only_where_they_were_computed():
    memo = SubprogramMemo()
    value = [(torch.ones(3), True)]
    memo.put(("block", 0), "l1(grad)", value)
    assert memo.get(("block", 1), "l1(grad)") is None
    found = memo.get(("block", 0), "l1(grad)")
    assert found is not None and found[0][0].equal(torch.ones(3))


def test_the_memo_stays_within_its_bound_overwriting_the_oldest():
    memo = SubprogramMemo(max_elements=10)
    for k in range(5):
        memo.put("here", f"node{k}", [(torch.full((4,), float(k)), True)])
        assert memo.elements <= 10
    assert len(memo) == 2
    assert memo.get("here", "node0") is None and memo.get("here", "node3") is not None
    found = memo.get("here", "node4")
    assert found is not None and found[0][0].equal(torch.full((4,), 4.0))  # not overwritten by node0..3
    memo.put("here", "huge", [(torch.zeros(11), True)])  # larger than the bound: not kept
    assert memo.get("here", "huge") is None and memo.elements <= 10


def test_values_come_back_exactly_with_their_dtype_shape_and_batching():
    memo = SubprogramMemo()
    pieces = [(torch.tensor([1 / 3, float("nan"), -0.0, float("inf")], dtype=torch.float32), True),
              (torch.tensor(2 / 3, dtype=torch.float32), False)]
    memo.put("here", "node", pieces)
    back = memo.get("here", "node")
    for (t, b), (u, c) in zip(pieces, back):
        assert b == c and u.dtype == t.dtype and u.shape == t.shape
        assert torch.equal(torch.nan_to_num(u), torch.nan_to_num(t)) and torch.equal(u.signbit(), t.signbit())
    memo.put("here", "half", [(torch.ones(3, dtype=torch.float16), True)])  # not exact through float64: not kept
    assert memo.get("here", "half") is None


def test_a_statistic_stored_in_two_16_bit_dtypes_is_stacked_without_widening(monkeypatch):
    import emq.stacked_stats as stacked_stats

    stats_list = _stats(8)
    for k, s in enumerate(stats_list):  # the cache picks float16 or bfloat16 per tensor
        for layer in s.layers.values():
            layer["grad"] = layer["grad"].to(torch.float16 if k % 3 else torch.bfloat16)
    split = StackedStats(stats_list, block=8)
    assert all(t.dtype != torch.float32 for col in split.blocks[0].columns for t, b in [col.tensors["grad"]])
    monkeypatch.setattr(stacked_stats, "_dtype_parts", lambda items, layer, members: [members])
    widened = StackedStats(stats_list, block=8)
    assert split.nbytes() < widened.nbytes()
    rng = random.Random(5)
    grammar = Grammar(["weight", "grad", "act", "params"])
    for p in [program(random_program(rng, grammar)) for _ in range(20)]:
        a, b = evaluate_stacked(p, split), evaluate_stacked(p, widened)
        assert np.array_equal(a[0], b[0], equal_nan=True) and a[1] == b[1], p.formula()
