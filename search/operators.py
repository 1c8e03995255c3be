"""Typed variation of proxy programs: mutations and subtree crossover that never break the types.

`mutate` and `crossover` take and return `Proxy` programs (simplified, so equivalent
programs share a hash); the moves themselves act on the program tree (`emq.program.Node`).

Every operator only puts a subtree where one of the same kind was (or wraps /
unwraps a same-kind unary op), so the result is well typed by construction. A
result over the size or depth limit is discarded and the draw repeated; after a
few misses the parent comes back unchanged (DEAP's `staticLimit` rule, which
keeps bloat out without biasing towards any shape).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from emq.program import Node, Path
from emq.proxy import Proxy
from primitives import Kind, get_op
from search.generate import Grammar, MIN_DEPTH, random_program

MUTATIONS = ("op", "leaf", "insert", "delete", "regrow")


@dataclass(frozen=True)
class Limits:
    """Bounds every varied program must respect."""

    max_size: int = 20
    max_depth: int = 7

    def fits(self, tree: Node) -> bool:
        return tree.size <= self.max_size and tree.depth <= self.max_depth


def program(tree: Node) -> Proxy:
    """Return the simplified program of a tree (the form every individual of a search has)."""
    return Proxy(tree).simplified()


def mutate(parent: Proxy, rng: random.Random, grammar: Grammar, limits: Limits, tries: int = 5) -> tuple[Proxy, str]:
    """Return (child, mutation name); the parent itself (name "none") when no variant fits the limits."""
    tree = parent.root
    for _ in range(tries):
        name = rng.choice(MUTATIONS)
        child = MUTATORS[name](tree, rng, grammar, limits)
        if child is not None and limits.fits(child):
            return program(child), name
    return parent, "none"


def crossover(a: Proxy, b: Proxy, rng: random.Random, limits: Limits, tries: int = 5) -> tuple[Proxy, Proxy]:
    """Return two children made by swapping a random subtree of `a` with one of the same kind in `b`.

    Roots are swapped only when nothing else matches (that swap just exchanges the
    programs). Children over the limits are replaced by their parent.
    """
    ta, tb = _swap(a.root, b.root, rng, limits, tries)
    return (a if ta is a.root else program(ta)), (b if tb is b.root else program(tb))


def _swap(a: Node, b: Node, rng: random.Random, limits: Limits, tries: int) -> tuple[Node, Node]:
    for _ in range(tries):
        pa, sa = _pick(a, rng, lambda p, n: bool(p))
        if pa is None:
            break
        options = [(p, n) for p, n in b.walk() if p and n.kind == sa.kind]
        if not options:
            continue
        pb, sb = rng.choice(options)
        ca, cb = a.replace(pa, sb), b.replace(pb, sa)
        ok_a, ok_b = limits.fits(ca), limits.fits(cb)
        if ok_a or ok_b:
            return (ca if ok_a else a), (cb if ok_b else b)
    return a, b


# ------------------------------------------------------------------ mutators
def _pick(tree: Node, rng: random.Random, keep: Callable[[Path, Node], bool]) -> tuple[Path | None, Node | None]:
    options = [(p, n) for p, n in tree.walk() if keep(p, n)]
    if not options:
        return None, None
    return rng.choice(options)


def mutate_op(tree: Node, rng: random.Random, grammar: Grammar, limits: Limits) -> Node | None:
    """Replace one op by another op of the same signature (children kept)."""
    path, node = _pick(tree, rng, lambda p, n: not n.is_leaf and len(grammar.ops_like(get_op(n.name))) > 1)
    if node is None:
        return None
    choices = [op for op in grammar.ops_like(get_op(node.name)) if op.name != node.name]
    op = grammar.pick_op(rng, choices)
    return tree.replace(path, Node(op.name, node.kind, node.children))


def mutate_leaf(tree: Node, rng: random.Random, grammar: Grammar, limits: Limits) -> Node | None:
    """Replace one statistic leaf by another statistic."""
    if len(grammar.stats) < 2:
        return None
    path, node = _pick(tree, rng, lambda p, n: n.is_leaf)
    others = [s for s in grammar.stats if s != node.name]
    weights = [grammar.stat_weights[grammar.stats.index(s)] for s in others]
    return tree.replace(path, Node(rng.choices(others, weights=weights)[0], Kind.T))


def mutate_insert(tree: Node, rng: random.Random, grammar: Grammar, limits: Limits) -> Node | None:
    """Wrap one node of kind k in a unary k -> k op (T: abs, square...; S: s_log...; N: n_neg...)."""
    path, node = _pick(tree, rng, lambda p, n: bool(grammar.unary_same[n.kind]))
    if node is None:
        return None
    op = grammar.pick_op(rng, grammar.unary_same[node.kind])
    return tree.replace(path, Node(op.name, node.kind, (node,)))


def mutate_delete(tree: Node, rng: random.Random, grammar: Grammar, limits: Limits) -> Node | None:
    """Remove one k -> k or k, k -> k op, putting one of its children in its place (the shrinking move)."""
    path, node = _pick(tree, rng, lambda p, n: bool(n.children) and all(c.kind == n.kind for c in n.children))
    if node is None:
        return None
    return tree.replace(path, rng.choice(node.children))


def mutate_regrow(tree: Node, rng: random.Random, grammar: Grammar, limits: Limits) -> Node | None:
    """Replace one subtree by a fresh random subtree of the same kind that fits the remaining room."""
    candidates = [(p, n) for p, n in tree.walk() if limits.max_depth - len(p) >= MIN_DEPTH[n.kind]]
    if not candidates:
        return None
    path, node = rng.choice(candidates)
    room_depth = limits.max_depth - len(path)
    room_size = max(limits.max_size - (tree.size - node.size), 1)
    new = random_program(rng, grammar, node.kind, max_depth=room_depth, max_size=max(room_size, MIN_DEPTH[node.kind]))
    return tree.replace(path, new)


MUTATORS: dict[str, Callable[[Node, random.Random, Grammar, Limits], Node | None]] = {
    "op": mutate_op,
    "leaf": mutate_leaf,
    "insert": mutate_insert,
    "delete": mutate_delete,
    "regrow": mutate_regrow,
}
