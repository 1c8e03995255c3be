"""Random typed programs: grow from the network output (N) down to statistic leaves.

The grammar follows the types: an N node is a network op (N -> N, N, N -> N) or an
aggregation over layers (S -> N); an S node is a scalar op or a reduction (T -> S);
a T node is a tensor op or a statistic. The chance of an op rather than the
"descending" choice falls with depth, and a node never starts a branch that cannot
reach its leaves within `max_depth`, so every program is well typed and bounded.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from primitives import Kind, Op, list_ops
from emq.program import Node

#: Least depth a subtree of each kind needs (N -> aggregation -> reduction -> stat).
MIN_DEPTH = {Kind.T: 1, Kind.S: 2, Kind.N: 3}
#: Default sampling weight of the ops of a group (others: 1). The matrix, cross-layer, position and rank ops
#: write the known proxies but fail on most statistics (non-square tensors, layers of several shapes), so random
#: programs draw them less often; `op_weights` overrides per op.
GROUP_WEIGHTS: Mapping[str, float] = {"matrix": 0.3, "across_layers": 0.3, "positions": 0.3, "population": 0.3}


@dataclass(frozen=True)
class GrowConfig:
    """Shape of random programs.

    `p_op[k]` is the chance, at the top of a kind-k chain, that a node of kind k is
    an op of the same kind (T: unary/binary tensor op, S: scalar op, N: network op)
    rather than the step down the type chain (T: statistic, S: reduction, N:
    aggregation); it shrinks linearly to 0 at `max_depth`. `op_weights` and
    `stat_weights` scale the sampling chance of single ops / statistics (default 1, or
    the op group's `GROUP_WEIGHTS`; 0 removes one).
    """

    max_depth: int = 7
    max_size: int = 20
    p_op: Mapping[str, float] = field(default_factory=lambda: {"T": 0.7, "S": 0.25, "N": 0.2})
    op_weights: Mapping[str, float] = field(default_factory=dict)
    stat_weights: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_depth < MIN_DEPTH[Kind.N]:
            raise ValueError(f"max_depth must be >= {MIN_DEPTH[Kind.N]} (aggregation, reduction, statistic)")
        if self.max_size < 3:
            raise ValueError("max_size must be >= 3")

    def describe(self) -> dict:
        return {"max_depth": self.max_depth, "max_size": self.max_size, "p_op": dict(self.p_op),
                "op_weights": dict(self.op_weights), "stat_weights": dict(self.stat_weights)}


class Grammar:
    """The ops and statistics a search may use, grouped by what they produce from what."""

    def __init__(self, stats: Sequence[str], config: GrowConfig = GrowConfig()) -> None:
        self.config = config
        self.stats = [s for s in sorted(set(stats)) if config.stat_weights.get(s, 1.0) > 0]
        if not self.stats:
            raise ValueError("no statistics to build programs from")
        self.stat_weights = [float(config.stat_weights.get(s, 1.0)) for s in self.stats]

        def usable(ops: list[Op]) -> list[Op]:
            return [op for op in ops if self.weight(op) > 0]

        # same kind in and out (the optional ops of a chain), by kind
        self.same: dict[Kind, list[Op]] = {
            k: usable([op for op in list_ops(output=k) if all(i == k for i in op.inputs)]) for k in Kind
        }
        # the step down the chain: S -> N aggregation, T -> S reduction
        self.down: dict[Kind, list[Op]] = {
            Kind.N: usable(list_ops(output=Kind.N, inputs=(Kind.S,))),
            Kind.S: usable(list_ops(output=Kind.S, inputs=(Kind.T,))),
        }
        for kind, ops in self.down.items():
            if not ops:
                raise ValueError(f"no op gives {kind.value} from the kind below; check op_weights")
        self.unary_same = {k: [op for op in ops if op.arity == 1] for k, ops in self.same.items()}

    def weight(self, op: Op) -> float:
        return float(self.config.op_weights.get(op.name, GROUP_WEIGHTS.get(op.group, 1.0)))

    def pick_op(self, rng: random.Random, ops: Sequence[Op]) -> Op:
        return rng.choices(list(ops), weights=[self.weight(op) for op in ops])[0]

    def pick_stat(self, rng: random.Random) -> str:
        return rng.choices(self.stats, weights=self.stat_weights)[0]

    def ops_like(self, op: Op) -> list[Op]:
        """Return the usable ops with `op`'s exact signature."""
        return [o for o in list_ops(output=op.output, inputs=op.inputs) if self.weight(o) > 0]


#: Ops of a separable program (`separable_op_weights`): each layer's term is built from that layer's 0-d
#: per-(layer, bits) statistics by entry-wise tensor ops, `mean` (a 0-d tensor's value) and scalar ops,
#: and `sum_layers` adds the terms. Cross-layer, matrix, position and network ops would couple layers or do nothing.
SEPARABLE_GROUPS = ("unary", "binary", "scalar")
SEPARABLE_DOWN = ("mean", "sum_layers")


def separable_op_weights() -> dict[str, float]:
    """Return op weights (0 removes an op) that leave the grammar only programs sum_layers(f(per-layer statistics)).

    With them every N node is `sum_layers` (no network op, no other aggregation), so every
    program the grammar grows, and every mutation or crossover of such programs, is separable.
    """
    def allowed(op: Op) -> bool:
        if op.name in SEPARABLE_DOWN:
            return True
        return op.group in SEPARABLE_GROUPS and (op.group == "scalar" or op.elementwise)

    return {op.name: 0.0 for op in list_ops() if not allowed(op)}


def grow(rng: random.Random, grammar: Grammar, kind: Kind = Kind.N, depth: int = 1,
         max_depth: int | None = None, chain_start: int | None = None) -> Node:
    """Return a random subtree of `kind` whose root sits at `depth` (1 = program root).

    `chain_start` is the depth where the current run of same-kind nodes began; the
    chance of another same-kind op falls linearly from `p_op[kind]` there to 0 at
    `max_depth`.
    """
    max_depth = max_depth or grammar.config.max_depth
    chain_start = depth if chain_start is None else chain_start
    room = max_depth - depth + 1  # levels available, this node included
    same = grammar.same[kind]
    p = grammar.config.p_op.get(kind.value, 0.0) * max(0.0, 1.0 - (depth - chain_start) / max(1, max_depth - chain_start))
    if same and room > MIN_DEPTH[kind] and rng.random() < p:
        op = grammar.pick_op(rng, same)
        kids = tuple(grow(rng, grammar, kind, depth + 1, max_depth, chain_start) for _ in op.inputs)
        return Node(op.name, kind, kids)
    if kind == Kind.T:
        return Node(grammar.pick_stat(rng), Kind.T)
    op = grammar.pick_op(rng, grammar.down[kind])
    below = op.inputs[0]
    return Node(op.name, kind, (grow(rng, grammar, below, depth + 1, max_depth),))


def random_program(rng: random.Random, grammar: Grammar, kind: Kind = Kind.N, max_depth: int | None = None,
                   max_size: int | None = None, tries: int = 50) -> Node:
    """Return a random program (or subtree of `kind`) within the depth and size limits.

    Draws until one fits `max_size`; after `tries` misses it returns the smallest
    program of that kind (so the call always terminates).
    """
    max_size = max_size or grammar.config.max_size
    max_depth = max_depth or grammar.config.max_depth
    for _ in range(tries):
        tree = grow(rng, grammar, kind, 1, max_depth)
        if tree.size <= max_size:
            return tree
    return minimal(rng, grammar, kind)


def minimal(rng: random.Random, grammar: Grammar, kind: Kind) -> Node:
    """Return the shortest random subtree of `kind` (e.g. aggregation(reduction(stat)) for N)."""
    if kind == Kind.T:
        return Node(grammar.pick_stat(rng), Kind.T)
    op = grammar.pick_op(rng, grammar.down[kind])
    return Node(op.name, kind, (minimal(rng, grammar, op.inputs[0]),))
