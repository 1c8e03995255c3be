"""What a NAS-Bench-201 cell computes, read off its 6 op ids: op counts, connectivity, isomorphism classes.

A cell's output is a sum of op chains applied to its input. Two cells that differ
as graphs can compute the same function: a skip edge only forwards a node's sum, a
zeroize edge (or any op applied to a node that is always zero) contributes nothing,
and the order of a sum does not matter. `canonical_form` writes each node as the
sorted sum of its terms under exactly these rules, so isomorphic cells get the same
string. Among the 15,625 cells this leaves 4,930 classes (one of them the 341
degenerate cells below). Only these formal rules are used, no algebra of the ops
themselves (pool(a + b) = pool(a) + pool(b) is not applied).

The NB201 paper's count of 6,466 "unique" cells uses a finer string rule: a zero
contribution stays in the sum as a placeholder, so two cells that differ only in
how many zero inputs a node has count as different, and a skip's source sum is not
merged into the target's. We drop zeros because a zero term changes nothing the
network computes; that rule reproduces 6,466 (checked once by hand).

A cell whose output form is zero has no path from the input to the output through
non-zeroize edges: the network then ignores its input, and it trains to chance
(10.0% on CIFAR-10 in the benchmark). Such cells are *degenerate*.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Sequence

from emq.models.nb201 import EDGES, NUM_NODES, OP_NAMES, check_cell

SKIP, ZERO = 0, 1
#: The numeric architecture fields of a candidate (counts of each op among the 6 edges).
COUNT_FIELDS: dict[int, str] = {2: "n_conv3x3", 3: "n_conv1x1", 0: "n_skip", 4: "n_pool", 1: "n_zero"}
#: The canonical form of a degenerate cell (its output is always zero).
ZERO_FORM = "0"


def all_cells() -> list[tuple[int, ...]]:
    """Return the 5^6 = 15,625 cells in lexicographic order of their op tuples."""
    return list(itertools.product(range(len(OP_NAMES)), repeat=len(EDGES)))


def op_counts(cell: Sequence[int]) -> dict[str, int]:
    """Return how many edges carry each op: n_conv3x3, n_conv1x1, n_skip, n_pool, n_zero."""
    ops = check_cell(cell)
    return {name: ops.count(op) for op, name in COUNT_FIELDS.items()}


@lru_cache(maxsize=None)
def canonical_form(cell: tuple[int, ...]) -> str:
    """Return the cell's output as a sorted formal sum of op chains on the input `x` ("0" when always zero).

    Skip forwards its source's terms, zeroize and any op on a zero node add nothing,
    other ops wrap their source's whole sum: e.g. (2,0,1,0,1,4) gives
    "avgpool3x3(conv3x3(x)+x)".
    """
    ops = check_cell(cell)
    nodes: list[tuple[str, ...]] = [("x",)]
    for j in range(1, NUM_NODES):
        terms: list[str] = []
        for (a, b), op in zip(EDGES, ops):
            if b != j or op == ZERO or not nodes[a]:
                continue
            if op == SKIP:
                terms.extend(nodes[a])
            else:
                terms.append(f"{OP_NAMES[op]}({'+'.join(nodes[a])})")
        nodes.append(tuple(sorted(terms)))
    return "+".join(nodes[-1]) or ZERO_FORM


def is_degenerate(cell: Sequence[int]) -> bool:
    """Return whether the cell's output never depends on its input (no input->output path avoiding zeroize)."""
    return canonical_form(tuple(cell)) == ZERO_FORM


def unique_cells(cells: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Return one cell per isomorphism class, the first in `cells` order (degenerate cells form one class)."""
    seen: set[str] = set()
    keep = []
    for cell in cells:
        form = canonical_form(tuple(cell))
        if form not in seen:
            seen.add(form)
            keep.append(tuple(cell))
    return keep
