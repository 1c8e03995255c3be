"""Algebraic simplification of programs by the identities registered on the ops (exact in floating point).

Rules, applied bottom-up until none fires (each removes at least one node, so the
work is linear in the program's size):
- f(x, x) = x for `equal_args="self"` ops (maximum, minimum);
- f(x, x) = g(x) where `equal_args` names g (mul(x, x) = square(x));
- f(f(x)) = x for involutions (neg, s_neg, n_neg);
- f(f(x)) = f(x) for projections (abs, relu, sign, flatten_sort, s_abs);
- f(neg(x)) = f(abs(x)) = f(x) for `sign_blind` ops (abs, square, l2, numel, ...), with
  neg / abs of the argument's own kind;
- f(p(x)) = f(x) for `order_blind` reductions of a `permutes` op (l2(flatten_sort(x)) = l2(x):
  equal up to the order of summation, and it saves sorting every activation).

The programs have no constant leaves, so there is nothing to fold; the one source of
constants is a self-cancelling form (sub(x, x), div(x, x), abs_diff(x, x)), which
`self_cancelling` reports so the search can reject it without evaluating it.
"""
from __future__ import annotations

from emq.program import Node
from primitives import Kind, get_op

#: The negation and absolute-value op of each kind (for `sign_blind` rewrites).
NEGATION = {Kind.T: "neg", Kind.S: "s_neg", Kind.N: "n_neg"}
ABSOLUTE = {Kind.T: "abs", Kind.S: "s_abs"}


def simplify(node: Node) -> Node:
    """Return the simplest equivalent of `node` under the registered identities (the same node when none applies).

    Equal subtrees of the result are one object, so simplifying a result again returns it
    unchanged (`simplify(simplify(x)) is simplify(x)`): the search holds only simplified programs.
    """
    done: dict[Node, Node] = {}
    shared: dict[Node, Node] = {}  # one object per distinct result, so equal subtrees come out as one object
    for sub in node.unique():  # children first: each distinct subtree is simplified once
        kids = tuple(done[c] for c in sub.children)
        new = sub if all(a is b for a, b in zip(kids, sub.children)) else Node(sub.name, sub.kind, kids)
        result = _rewrite(new)
        done[sub] = shared.setdefault(result, result)
    return done[node]


def _rewrite(node: Node) -> Node:
    while not node.is_leaf:
        op = get_op(node.name)
        out = _once(node, op)
        if out is None:
            return node
        node = out
    return node


def _once(node: Node, op) -> Node | None:
    kids = node.children
    if op.arity == 2 and kids[0] == kids[1]:
        if op.equal_args == "self":
            return kids[0]
        if op.equal_args and op.equal_args != "cancel":
            return Node(op.equal_args, node.kind, (kids[0],))
    if op.arity != 1:
        return None
    (child,) = kids
    if child.is_leaf:
        return None
    if child.name == node.name and op.involution:
        return child.children[0]
    if child.name == node.name and op.projection:
        return child
    if op.sign_blind and child.name in (NEGATION.get(child.kind), ABSOLUTE.get(child.kind)):
        return Node(node.name, node.kind, child.children)
    if op.order_blind and get_op(child.name).permutes:
        return Node(node.name, node.kind, child.children)
    return None


def self_cancelling(node: Node) -> str | None:
    """Return the first self-cancelling subterm (e.g. `sub(grad, grad)`: a constant) of `node`, or None."""
    for sub in node.unique():
        if len(sub.children) == 2 and sub.children[0] == sub.children[1] and get_op(sub.name).equal_args == "cancel":
            return sub.formula()
    return None
