"""Proxy programs as typed expression trees: the form the search varies.

A `Proxy` is a DAG; the search works on its tree expansion (a shared subexpression
appears once per use), which makes subtree swaps and regrowth simple. Trees are
immutable; every variation returns a new tree. The formula text is the exchange
form: `Node.formula()` parses back with `Proxy.from_formula` and with `parse_tree`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

from emq.proxy import MAX_DEPTH, MAX_FORMULA_CHARS, MAX_NODES, Proxy, ProxyFormatError
from emq.stats import STATS
from primitives import Kind, UnknownOpError, get_op

Path = tuple[int, ...]


@dataclass(frozen=True, eq=True)
class Node:
    """One tree node: a statistic leaf (no children, kind T) or an op applied to child nodes."""

    name: str
    kind: Kind
    children: tuple["Node", ...] = ()

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @cached_property
    def size(self) -> int:
        """Number of nodes (equals `Proxy.size` of the parsed formula)."""
        return 1 + sum(c.size for c in self.children)

    @cached_property
    def depth(self) -> int:
        """Nodes on the longest root-to-leaf path (a lone leaf has depth 1)."""
        return 1 + max((c.depth for c in self.children), default=0)

    def formula(self) -> str:
        """Return the formula text, e.g. `mean_layers(l2(weight))`."""
        if self.is_leaf:
            return self.name
        return f"{self.name}({', '.join(c.formula() for c in self.children)})"

    def canonical(self) -> str:
        """Return the formula with commutative arguments sorted (what `Proxy.canonical_hash` hashes)."""
        if self.is_leaf:
            return self.name
        parts = [c.canonical() for c in self.children]
        if get_op(self.name).commutative:
            parts.sort()
        return f"{self.name}({', '.join(parts)})"

    def canonical_hash(self) -> str:
        """Return the same hash as `Proxy.canonical_hash()` of this program."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def to_proxy(self, meta: dict | None = None) -> Proxy:
        """Return the validated Proxy of this tree (raises ProxyFormatError if ill-typed)."""
        return Proxy.from_formula(self.formula(), meta=meta)

    def stats(self) -> set[str]:
        """Return the statistic names at the leaves."""
        if self.is_leaf:
            return {self.name}
        return set().union(*(c.stats() for c in self.children))

    # ------------------------------------------------------------ addressing
    def walk(self, path: Path = ()) -> Iterator[tuple[Path, "Node"]]:
        """Yield (path, node) in preorder; a path is the child indices from the root."""
        yield path, self
        for i, child in enumerate(self.children):
            yield from child.walk(path + (i,))

    def get(self, path: Path) -> "Node":
        node = self
        for i in path:
            node = node.children[i]
        return node

    def replace(self, path: Path, new: "Node") -> "Node":
        """Return a copy with the subtree at `path` replaced by `new` (of the same kind)."""
        if not path:
            return new
        i = path[0]
        kids = list(self.children)
        kids[i] = kids[i].replace(path[1:], new)
        return Node(self.name, self.kind, tuple(kids))

    def depth_of(self, path: Path) -> int:
        """Return the depth at which `path` sits (the root is at 1)."""
        return len(path) + 1

    def __str__(self) -> str:
        return self.formula()

    def __repr__(self) -> str:
        return f"Node({self.formula()!r})"


def leaf(stat: str) -> Node:
    return Node(stat, Kind.T)


def op_node(name: str, *children: Node) -> Node:
    """Return a node applying op `name`; fails if the children do not match its signature."""
    op = get_op(name)
    got = tuple(c.kind for c in children)
    if got != op.inputs:
        raise ProxyFormatError(f"{name} has signature {op.signature()} but receives ({', '.join(k.value for k in got)})")
    return Node(name, op.output, tuple(children))


_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|([(),]))")


def parse_tree(text: str) -> Node:
    """Return the typed tree of a formula (the tree expansion of any proxy's `formula()`).

    The limits of `emq.proxy` apply (MAX_FORMULA_CHARS, MAX_DEPTH, MAX_NODES), with the same one-line errors.
    """
    if len(text) > MAX_FORMULA_CHARS:
        raise ProxyFormatError(f"formula of {len(text)} characters; at most {MAX_FORMULA_CHARS} are allowed")
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if not text[pos:].strip():
                break
            raise ProxyFormatError(f"formula {text!r}, column {pos + 1}: unexpected character")
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    out, end = _parse(tokens, 0, text, 1)
    if end != len(tokens):
        raise ProxyFormatError(f"formula {text!r}: unexpected text after the end")
    if out.size > MAX_NODES:
        raise ProxyFormatError(f"formula with {out.size} nodes; at most {MAX_NODES} are allowed")
    return out


def _parse(tokens: list[str], i: int, text: str, depth: int) -> tuple[Node, int]:
    if depth > MAX_DEPTH:
        raise ProxyFormatError(f"formula nested deeper than {MAX_DEPTH} levels (the limit)")
    if i >= len(tokens) or tokens[i] in "(),":
        raise ProxyFormatError(f"formula {text!r}: expected a name")
    name = tokens[i]
    if i + 1 >= len(tokens) or tokens[i + 1] != "(":
        if name not in STATS:
            raise ProxyFormatError(f"formula {text!r}: unknown statistic {name!r}")
        return leaf(name), i + 1
    i += 2
    kids: list[Node] = []
    while True:
        if i < len(tokens) and tokens[i] == ")" and not kids:
            i += 1
            break
        kid, i = _parse(tokens, i, text, depth + 1)
        kids.append(kid)
        if i >= len(tokens):
            raise ProxyFormatError(f"formula {text!r}: missing ')'")
        sep = tokens[i]
        i += 1
        if sep == ")":
            break
        if sep != ",":
            raise ProxyFormatError(f"formula {text!r}: expected ',' or ')'")
    try:
        return op_node(name, *kids), i
    except UnknownOpError as err:
        raise ProxyFormatError(str(err)) from None


def tree_of(proxy: Proxy) -> Node:
    """Return the tree expansion of a proxy program (shared nodes are duplicated)."""
    return parse_tree(proxy.formula())
