"""The typed program tree behind every proxy: immutable nodes, one parser, one printer, one canonical form.

A `Node` is a statistic leaf (kind T) or a registered op applied to child nodes.
Nodes are immutable and compare by structure; their hash is computed once, so
equal subtrees can share one evaluation and one memo entry. The same Python node
may be a child of several parents (a JSON file's shared node is built once), so a
program is stored as a DAG while it reads as a tree.

Limits (a hostile formula or file is refused at parse time with one line, before any
work; the search itself builds programs of at most 20 nodes and depth 7):
- MAX_FORMULA_CHARS characters of a formula;
- MAX_NODES distinct nodes;
- MAX_DEPTH nodes on the longest path from the output to a leaf (so recursion stays shallow);
- MAX_TREE_SIZE nodes of the tree expansion (what the formula prints: a shared node counts once per use).
"""
from __future__ import annotations

import re
from typing import Iterator

from emq.errors import EMQUserError
from emq.stats import STATS
from primitives import Kind, UnknownOpError, get_op

#: Characters of a formula.
MAX_FORMULA_CHARS = 20_000
#: Distinct nodes of a program (a formula's tree, or a JSON file's DAG).
MAX_NODES = 1_000
#: Nodes on the longest path from the output to a leaf.
MAX_DEPTH = 64
#: Nodes of a program's tree expansion (a reused node counts once per use).
MAX_TREE_SIZE = 10_000

Path = tuple[int, ...]


class ProxyFormatError(EMQUserError, ValueError):
    """A program that cannot be built: unknown op/stat, type error, malformed JSON or formula, over a limit."""


class Node:
    """One program node: a statistic leaf (no children, kind T) or an op applied to child nodes.

    Immutable; equality is structural and the hash is computed once from the
    children's hashes, so building and comparing a program are linear in its size.
    """

    __slots__ = ("name", "kind", "children", "size", "depth", "_hash", "_canonical")

    def __init__(self, name: str, kind: Kind, children: tuple["Node", ...] = ()) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "children", tuple(children))
        #: Nodes of the tree expansion (equals the formula's node count).
        object.__setattr__(self, "size", 1 + sum(c.size for c in children))
        #: Nodes on the longest root-to-leaf path (a lone leaf has depth 1).
        object.__setattr__(self, "depth", 1 + max((c.depth for c in children), default=0))
        object.__setattr__(self, "_hash", hash((name, kind.value, tuple(c._hash for c in children))))
        object.__setattr__(self, "_canonical", None)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("program nodes are immutable; build a new node instead")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Node) or self._hash != other._hash:
            return False
        return self.name == other.name and self.kind == other.kind and self.children == other.children

    def __reduce__(self) -> tuple:  # pickles (process pools) as plain constructor calls
        return (Node, (self.name, self.kind, self.children))

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def formula(self) -> str:
        """Return the formula text, e.g. `mean_layers(l2(weight))`."""
        if self.is_leaf:
            return self.name
        return f"{self.name}({', '.join(c.formula() for c in self.children)})"

    def canonical(self) -> str:
        """Return the formula with commutative arguments sorted (computed once per node)."""
        if self._canonical is None:
            if self.is_leaf:
                text = self.name
            else:
                text = f"{self.name}({', '.join(c.canonical() for c in self.canonical_children())})"
            object.__setattr__(self, "_canonical", text)
        return self._canonical

    def canonical_children(self) -> tuple["Node", ...]:
        """Return the children in canonical order: a commutative op's sorted by their canonical text, else as written."""
        if self.is_leaf or not get_op(self.name).commutative:
            return self.children
        return tuple(sorted(self.children, key=Node.canonical))

    def stats(self) -> set[str]:
        """Return the statistic names at the leaves."""
        return {n.name for n in self.unique() if n.is_leaf}

    def unique(self) -> list["Node"]:
        """Return the distinct subtrees, children before parents (each shared subtree once: linear work)."""
        seen: dict[Node, None] = {}
        stack: list[tuple[Node, bool]] = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if node in seen:
                continue
            if expanded or node.is_leaf:
                seen[node] = None
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in reversed(node.children))
        return list(seen)

    # ------------------------------------------------------------ addressing
    def walk(self, path: Path = ()) -> Iterator[tuple[Path, "Node"]]:
        """Yield (path, node) in preorder; a path is the child indices from the root."""
        yield path, self
        for i, child in enumerate(self.children):
            yield from child.walk(path + (i,))

    def replace(self, path: Path, new: "Node") -> "Node":
        """Return a copy with the subtree at `path` replaced by `new` (of the same kind)."""
        if not path:
            return new
        i = path[0]
        kids = list(self.children)
        kids[i] = kids[i].replace(path[1:], new)
        return Node(self.name, self.kind, tuple(kids))

    def __str__(self) -> str:
        return self.formula()

    def __repr__(self) -> str:
        return f"Node({self.formula()!r})"


def leaf(stat: str) -> Node:
    """Return the leaf reading statistic `stat` (fails, listing the catalogue, for an unknown name)."""
    if stat not in STATS:
        raise ProxyFormatError(f"unknown statistic {stat!r}; known: {', '.join(sorted(STATS))}")
    return Node(stat, Kind.T)


def op_node(name: str, *children: Node) -> Node:
    """Return a node applying op `name`; fails if the children do not match its signature."""
    try:
        op = get_op(name)
    except UnknownOpError as err:
        raise ProxyFormatError(str(err)) from None
    got = tuple(c.kind for c in children)
    if len(got) != op.arity:
        raise ProxyFormatError(f"{name} takes {op.arity} input(s) ({op.signature()}), got {len(got)}")
    if got != op.inputs:
        shown = ", ".join(k.value for k in got)
        raise ProxyFormatError(
            f"{name} has signature {op.signature()} but receives ({shown}); reduce a T to S with a reduction "
            "(mean, l2, ...) and S to N with an aggregation (mean_layers, ...)")
    return Node(name, op.output, tuple(children))


def check_limits(node: Node, where: str = "the program") -> None:
    """Refuse a program over MAX_DEPTH, MAX_TREE_SIZE or MAX_NODES (counted without recursion)."""
    if node.depth > MAX_DEPTH:
        raise ProxyFormatError(f"{where} is deeper than {MAX_DEPTH} nodes (the limit)")
    if node.size > MAX_TREE_SIZE:
        raise ProxyFormatError(f"{where}'s formula would have more than {MAX_TREE_SIZE} nodes (shared nodes count "
                               "once per use; the limit)")
    distinct = len(node.unique())
    if distinct > MAX_NODES:
        raise ProxyFormatError(f"{where} has {distinct} nodes; at most {MAX_NODES} are allowed")


_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\()|(\))|(,))")


class _FormulaParser:
    """Recursive-descent parser for `name(arg, ...)`; names without parentheses are statistics.

    Recursion is bounded by MAX_DEPTH and every character is read once: linear time.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.count = 0

    def parse(self) -> Node:
        if not isinstance(self.text, str):
            raise ProxyFormatError(f"a formula must be text, got {type(self.text).__name__}")
        if not self.text.strip():
            raise ProxyFormatError("empty formula")
        if len(self.text) > MAX_FORMULA_CHARS:
            raise ProxyFormatError(f"formula of {len(self.text)} characters; at most {MAX_FORMULA_CHARS} are allowed")
        node = self._expr(1)
        if self.text[self.pos:].strip():
            self._fail("unexpected text after the end of the formula")
        return node

    def _fail(self, message: str) -> None:
        shown = self.text if len(self.text) <= 200 else self.text[:200] + "..."
        raise ProxyFormatError(f"formula {shown!r}, column {self.pos + 1}: {message}")

    def _next(self) -> tuple[str, str]:
        m = _TOKEN.match(self.text, self.pos)
        if not m:
            self._fail("expected a name, '(', ')' or ','")
        self.pos = m.end()
        if m.group(1):
            return "name", m.group(1)
        return "punct", m.group(2) or m.group(3) or m.group(4)

    def _peek(self) -> str | None:
        m = _TOKEN.match(self.text, self.pos)
        return (m.group(2) or m.group(3) or m.group(4)) if m and not m.group(1) else None

    def _expr(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            self._fail(f"nested deeper than {MAX_DEPTH} levels (the limit)")
        kind, value = self._next()
        if kind != "name":
            self._fail(f"expected a name, got {value!r}")
        self.count += 1
        if self.count > MAX_NODES:
            self._fail(f"more than {MAX_NODES} nodes (the limit)")
        if self._peek() != "(":
            if value not in STATS:
                self._fail(f"unknown statistic {value!r}; known: {', '.join(sorted(STATS))}")
            return Node(value, Kind.T)
        self._next()  # "("
        args: list[Node] = []
        if self._peek() == ")":
            self._next()
        else:
            while True:
                args.append(self._expr(depth + 1))
                _, sep = self._next()
                if sep == ")":
                    break
                if sep != ",":
                    self._fail(f"expected ',' or ')', got {sep!r}")
        return op_node(value, *args)


def parse_formula(text: str) -> Node:
    """Return the typed program tree of a formula such as `mean_layers(l2(mul(abs(grad), weight)))`."""
    return _FormulaParser(text).parse()
