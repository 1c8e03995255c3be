"""A program's evaluation plan: its distinct nodes, children first, split into the per-layer and network parts."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

from emq.program import Node
from primitives import Kind, get_op


@dataclass
class Plan:
    """A program's distinct nodes (children first), split into the per-layer part and the network part.

    Nodes are positions in `nodes`; `args[i]` are the positions of node i's children.
    """

    nodes: list[Node]
    args: list[tuple[int, ...]]
    output: int
    layer_nodes: list[int]
    net_nodes: list[int]
    uses: Counter
    to_net: set[int]  # per-layer nodes read by an aggregation
    #: Cross-layer nodes (`sum_layers_t` ...), and the per-layer nodes whose value is one per network: the cross-layer
    #: nodes and the ops on nothing else (computed once per candidate, then the same in each of its layers).
    cross: set[int] = field(default_factory=set)
    wide: set[int] = field(default_factory=set)
    #: Per-layer node -> how many cross-layer nodes lie on its longest path to a leaf (the stage it is computed in).
    level: dict[int, int] = field(default_factory=dict)

    @cached_property
    def scalar_nodes(self) -> list[int]:
        """Return the per-layer op nodes with one value per layer (kind S): what a subprogram memo keeps."""
        return [i for i in self.layer_nodes if self.nodes[i].kind == Kind.S and not self.nodes[i].is_leaf
                and i not in self.wide]

    def live_nodes(self, given: set[int] | frozenset[int]) -> list[int]:
        """Return the per-layer nodes (children first) needed for the aggregations' inputs when `given` are known."""
        live: set[int] = set()
        stack = list(self.to_net)
        while stack:
            i = stack.pop()
            if i in live:
                continue
            live.add(i)
            if i not in given:
                stack.extend(self.args[i])
        return [i for i in self.layer_nodes if i in live]

    @classmethod
    def of(cls, root: Node) -> "Plan":
        nodes = root.unique()
        where = {node: i for i, node in enumerate(nodes)}
        args = [tuple(where[c] for c in node.children) for node in nodes]
        layer_nodes = [i for i, node in enumerate(nodes) if node.kind != Kind.N]
        net_nodes = [i for i, node in enumerate(nodes) if node.kind == Kind.N]
        uses = Counter(a for i in layer_nodes for a in args[i])
        to_net = {args[i][0] for i in net_nodes if get_op(nodes[i].name).is_aggregation}
        cross: set[int] = set()
        wide: set[int] = set()
        level: dict[int, int] = {}
        for i in layer_nodes:  # children first
            if nodes[i].is_leaf:
                level[i] = 0
            elif get_op(nodes[i].name).is_cross_layer:
                cross.add(i)
                wide.add(i)
                level[i] = level[args[i][0]] + 1
            else:
                level[i] = max(level[a] for a in args[i])
                if all(a in wide for a in args[i]):
                    wide.add(i)
        return cls(nodes, args, where[root], layer_nodes, net_nodes, uses, to_net, cross, wide, level)
