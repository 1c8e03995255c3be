"""The one evaluator of proxy programs: statistics stacked across candidates, ops applied once per layer.

Every score in EMQ comes from here: the search, `emq score`, `emq apply`, program
baselines, and `Proxy.evaluate` (one network is the n = 1 case). Each layer of the
candidates of a block is one column, its statistics stacked along a leading candidate
dimension, and each distinct subprogram is computed once per column and piece of
candidates (a subtree used twice is evaluated once: work is linear in the program's
distinct nodes). Ops marked `elementwise` in the registry run directly on the stacked
tensor, the others through `torch.func.vmap` over the candidate dimension. Statistics
equal in every member of a column (the full-precision weights of a mixed-precision
benchmark) stay unstacked, so the subprograms that only read them are computed once.

Pieces hold about CHUNK_ELEMENTS entries per intermediate (and at least MIN_BATCH
networks), so a chain of ops on a piece stays in cache and memory is bounded. An op
that fails under vmap is retried network by network for that node only, which also
tells which networks fail.

A candidate's score depends only on its block (shards made of whole blocks give the
same float32 scores as the whole set; tested), and failures are reported per
candidate with a countable reason.

Two op families reach beyond one layer or one network. A cross-layer op
(`sum_layers_t`, ...) needs its argument in every layer of a candidate first, so a
program using one runs in stages (`_staged_terms`): the network-wide values are computed
once per candidate and read by every layer. A population op (`n_rank_log`, ...) needs
every candidate's score first, so its program is scored as its parts and joined over the
whole set (`emq.population`), never within a block, piece or shard.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch
from torch.func import vmap

from emq.population import Expansion, join_reasons, join_scores, refuse_population, split_population
from emq.program import Node
from emq.stats import NetworkStats
from primitives import Kind, get_op

if TYPE_CHECKING:  # the Proxy class evaluates through this module
    from emq.layer_weights import LayerWeights
    from emq.proxy import Proxy

#: Entries one intermediate tensor of a piece of candidates may hold (bounds memory, keeps pieces in cache).
CHUNK_ELEMENTS = 1 << 20
#: Fewest and most candidates per stacking block (see `block_for`).
MIN_BLOCK, MAX_BLOCK = 32, 256


def block_for(n: int) -> int:
    """Return the stacking block of a set of `n` candidates: a power of two in [MIN_BLOCK, MAX_BLOCK], n / 8 or less.

    Larger blocks stack more networks per op (architectures of different shapes share
    the columns of their common layers); at least 8 blocks keep the shards of a pool
    balanced. A shard made of whole blocks scores bit-identically to the whole set, so
    the block is a function of the whole set's size, passed to the shards' stacks.
    """
    block = MIN_BLOCK
    while block * 2 <= min(MAX_BLOCK, n // 8):
        block *= 2
    return block
#: Fewest networks in a piece (a lone network is computed as a piece of two copies, see `_apply`).
MIN_BATCH = 2
Value = tuple[torch.Tensor, bool]  # (tensor, batched: has the leading candidate dimension)


@dataclass
class _Column:
    """One layer (same name, statistics and shapes) of the candidates of a block that have it, stacked."""

    name: str
    members: np.ndarray  # block-local indices of the candidates having this layer, ascending
    stat_names: frozenset[str]
    tensors: dict[str, Value]
    params: torch.Tensor  # [m] float64: the layer's parameter count in each member


@dataclass
class _Block:
    """Up to `block` consecutive candidates: their layers as columns, and each candidate's layers in order."""

    index: np.ndarray  # positions (in the whole list) of the block's candidates
    columns: list[_Column]
    #: per candidate: (column, row in the column) of each of its layers, in the candidate's layer order
    layout: list[list[tuple[int, int]]]


class StackedStats:
    """Statistics of many networks, stacked per layer along a leading candidate dimension.

    Candidates are stacked in blocks of `block` consecutive positions (default
    `block_for(len(stats_list))`). Within a block,
    each layer (name, statistics, shapes) is one column holding the candidates that
    have it, so networks of different architectures (NAS-Bench-201 cells, ViT subnets)
    share the columns of their common layers instead of each being evaluated alone.
    A block is computed the same way whichever other blocks sit beside it, so a shard
    made of whole blocks gives bit-identical scores to the whole set: torch's
    vectorised kernels round an entry differently depending on where it sits in a
    tensor, so a candidate must sit at the same place in every run.
    """

    def __init__(self, stats_list: Sequence[NetworkStats], device: str | torch.device | None = None,
                 chunk_elements: int = CHUNK_ELEMENTS, block: int | None = None) -> None:
        self.n = len(stats_list)
        self.chunk_elements = chunk_elements
        self.block = block_for(self.n) if block is None else block
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.blocks = [self._stack(stats_list[a:a + self.block], np.arange(a, min(self.n, a + self.block)))
                       for a in range(0, self.n, self.block)]

    def _stack(self, items: Sequence[NetworkStats], index: np.ndarray) -> _Block:
        by_key: dict[tuple, list[int]] = {}
        for k, s in enumerate(items):
            for layer, d in s.layers.items():
                by_key.setdefault((layer, tuple(sorted((n, tuple(t.shape)) for n, t in d.items()))), []).append(k)
        columns: list[_Column] = []
        where: dict[tuple[str, int], tuple[int, int]] = {}
        for (layer, _), members in by_key.items():
            first = items[members[0]].layers[layer]
            tensors: dict[str, Value] = {}
            for stat, t0 in first.items():
                column = [items[k].layers[layer][stat] for k in members]
                if len(members) > 1 and all(t is t0 or (t.dtype == t0.dtype and torch.equal(t, t0))
                                            for t in column[1:]):
                    tensors[stat] = (t0.to(self.device), False)  # equal in every member: computed once
                else:
                    dtype = t0.dtype if all(t.dtype == t0.dtype for t in column) else torch.float32
                    tensors[stat] = (torch.stack([t.to(dtype) for t in column]).to(self.device), True)
            params = torch.tensor([float(items[k].params.get(layer, 0)) for k in members], dtype=torch.float64,
                                  device=self.device)
            for row, k in enumerate(members):
                where[(layer, k)] = (len(columns), row)
            columns.append(_Column(layer, np.array(members), frozenset(first), tensors, params))
        layout = [[where[(layer, k)] for layer in s.layers] for k, s in enumerate(items)]
        return _Block(index, columns, layout)

    def subset(self, positions: Sequence[int]) -> "StackedStats":
        """Return the stacked statistics of some candidates (by position), keeping their blocks' stacking."""
        out = StackedStats.__new__(StackedStats)
        out.n = len(positions)
        out.chunk_elements = self.chunk_elements
        out.block = self.block
        out.device = self.device
        out.blocks = []
        new_position = {int(p): k for k, p in enumerate(positions)}
        for blk in self.blocks:
            keep = [k for k, i in enumerate(blk.index) if int(i) in new_position]
            if not keep:
                continue
            local = {k: j for j, k in enumerate(keep)}
            columns: list[_Column] = []
            renumber: dict[int, int] = {}
            rows: dict[int, dict[int, int]] = {}
            for c, col in enumerate(blk.columns):
                chosen = [r for r, k in enumerate(col.members) if int(k) in local]
                if not chosen:
                    continue
                sel = torch.tensor(chosen, device=self.device)
                renumber[c] = len(columns)
                rows[c] = {r: j for j, r in enumerate(chosen)}
                columns.append(_Column(col.name, np.array([local[int(col.members[r])] for r in chosen]),
                                       col.stat_names,
                                       {s: ((t.index_select(0, sel), True) if b else (t, False))
                                        for s, (t, b) in col.tensors.items()},
                                       col.params.index_select(0, sel)))
            layout = [[(renumber[c], rows[c][r]) for c, r in blk.layout[k]] for k in keep]
            out.blocks.append(_Block(np.array([new_position[int(blk.index[k])] for k in keep]), columns, layout))
        return out

    def total_params(self) -> np.ndarray:
        """Return each network's parameter count (the sum over its layers), in position order."""
        out = np.zeros(self.n, dtype=np.float64)
        for blk in self.blocks:
            for k, layers in enumerate(blk.layout):
                out[blk.index[k]] = float(sum(float(blk.columns[c].params[r]) for c, r in layers))
        return out

    def nbytes(self) -> int:
        """Return the bytes held by the stacked tensors."""
        return sum(t.numel() * t.element_size() for blk in self.blocks for col in blk.columns
                   for t, _ in col.tensors.values())


class _ChunkFailed(Exception):
    """Every candidate of the chunk has failed; stop evaluating it."""


@dataclass
class _Plan:
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

    @classmethod
    def of(cls, root: Node) -> "_Plan":
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


def evaluate_stacked(proxy: "Proxy | Node", stacked: StackedStats,
                     dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, Counter]:
    """Return one score per network (NaN where the program failed) and the failures counted by reason.

    A candidate that fails is counted under the op that failed (`op_error:<op>`,
    `shape:<op>`), `missing_stat` when none of its entries carries every statistic
    the program reads, or `nonfinite` (its score is then kept as computed). A proxy
    with fitted layer weights (`emq fit`) has its layer aggregations read each layer's
    term times the layer's weight.
    """
    root = proxy if isinstance(proxy, Node) else proxy.root
    weights = None if isinstance(proxy, Node) else proxy.layer_weights
    split = split_population(root)
    if split is None:
        scores, reasons = _scores_and_reasons(root, weights, stacked, dtype)
    else:  # rank aggregation: its parts on every candidate first, then their ranks (emq.population)
        results = [_scores_and_reasons(part, weights, stacked, dtype) for part in split.parts]
        scores = join_scores(split, [s for s, _ in results])
        reasons = join_reasons([r for _, r in results])
    return scores, _counted(scores, reasons)


def _counted(scores: np.ndarray, reasons: Sequence[str | None]) -> Counter:
    """Return the failures by reason; scores non-finite without a reason count as `nonfinite`."""
    failures = Counter(r for r in reasons if r is not None)
    failures["nonfinite"] += int(np.sum(~np.isfinite(scores))) - sum(failures.values())
    return +failures


def _scores_and_reasons(root: Node, weights: "LayerWeights | None", stacked: StackedStats,
                        dtype: torch.dtype) -> tuple[np.ndarray, list[str | None]]:
    """Return one score per network of a program without population ops, and each network's failure reason (or None)."""
    scores = np.full(stacked.n, np.nan)
    reasons: list[str | None] = [None] * stacked.n
    plan = _Plan.of(root)
    needed = root.stats()
    for blk in stacked.blocks:
        failed: list[str | None] = [None] * len(blk.index)
        out = _run_block(plan, blk, needed, failed, dtype, stacked.chunk_elements, weights)
        for k, pos in enumerate(blk.index):
            reasons[int(pos)] = failed[k]
            if failed[k] is None:
                scores[int(pos)] = float(out[k])
    return scores, reasons


def _chunks(column: _Column, needed: set[str], chunk_elements: int) -> list[tuple[int, int]]:
    """Return [start, stop) pieces covering a column's members.

    Pieces are sized so one intermediate holds about `chunk_elements` entries (at
    least two networks): the chain of ops on a piece stays in cache and memory is
    bounded. How a piece is computed depends only on its block, so a shard of whole
    blocks gives the same scores.
    """
    m = len(column.members)
    widths = [t[0].numel() for s, (t, b) in column.tensors.items() if b and s in needed]
    if not widths:
        return [(0, m)]  # nothing per-network in this layer: computed once
    size = max(MIN_BATCH, chunk_elements // max(widths))
    return [(a, min(m, a + size)) for a in range(0, m, size)]


@dataclass
class LayerGroup:
    """Candidates of one block with as many layers: the per-layer terms a program's aggregations read.

    `positions` index the whole candidate list; `names[j]` are candidate j's layer
    names in its layer order; `terms[nid]` and `params` are [candidates, layers].
    """

    positions: np.ndarray
    names: list[list[str]]
    terms: dict[int, torch.Tensor]
    params: torch.Tensor


def layer_groups(proxy: "Proxy | Node", stacked: StackedStats,
                 dtype: torch.dtype = torch.float32) -> tuple[_Plan, list[LayerGroup]]:
    """Return the program's plan and its per-layer terms, grouped for `network_tensor`.

    This is the evaluator stopped before the network part, so `emq fit` can weight the
    terms and differentiate the rest; candidates that failed are in no group.
    """
    root = proxy if isinstance(proxy, Node) else proxy.root
    refuse_population(root, "a per-network fit of its layer terms")
    plan = _Plan.of(root)
    needed = root.stats()
    groups: list[LayerGroup] = []
    for blk in stacked.blocks:
        failed: list[str | None] = [None] * len(blk.index)
        _run_block(plan, blk, needed, failed, dtype, stacked.chunk_elements, capture=groups)
    return plan, groups


def _run_block(plan: _Plan, blk: _Block, needed: set[str], failed: list[str | None], dtype: torch.dtype,
               chunk_elements: int, layer_weights: "LayerWeights | None" = None,
               capture: list[LayerGroup] | None = None) -> np.ndarray:
    """Return the block's scores (failures marked in `failed`): per-layer nodes by column, network nodes by layer count."""
    usable = [c for c, col in enumerate(blk.columns) if needed <= col.stat_names]
    offsets: dict[int, int] = {}
    size = 0
    for c in usable:
        offsets[c] = size
        size += len(blk.columns[c].members)
    if plan.cross:
        flat = _staged_terms(plan, blk, usable, needed, failed, dtype, chunk_elements)
    else:
        flat = _column_terms(plan, blk, usable, needed, failed, dtype, chunk_elements)
    return _network_part(plan, blk, usable, offsets, flat, failed, dtype, layer_weights, capture)


def _column_terms(plan: _Plan, blk: _Block, usable: list[int], needed: set[str], failed: list[str | None],
                  dtype: torch.dtype, chunk_elements: int) -> dict[int, list[torch.Tensor]]:
    """Return, per usable column, the [m] values of the per-layer nodes aggregations read (column by column)."""
    # Per column and per-layer node read by an aggregation: its value for each member, [m].
    flat: dict[int, list[torch.Tensor]] = {nid: [] for nid in plan.to_net}
    for c in usable:
        col = blk.columns[c]
        m = len(col.members)
        part = [failed[int(k)] for k in col.members]
        pieces: dict[int, list[torch.Tensor]] = {nid: [] for nid in plan.to_net}
        for start, stop in _chunks(col, needed, chunk_elements):
            sub = part[start:stop]
            try:
                values = _run_layer(plan, col.tensors, start, stop, sub, dtype, col.name)
            except _ChunkFailed:
                values = {nid: (torch.full((stop - start,), math.nan, dtype=dtype), True) for nid in plan.to_net}
            part[start:stop] = sub
            for nid, (t, b) in values.items():
                pieces[nid].append(t.reshape(-1) if b else t.reshape(()).expand(stop - start))
        for k, reason in zip(col.members, part):
            if reason is not None and failed[int(k)] is None:
                failed[int(k)] = reason
        for nid, parts in pieces.items():
            flat[nid].append(torch.cat(parts) if len(parts) > 1 else parts[0].reshape(m))
    return flat


def _network_part(plan: _Plan, blk: _Block, usable: list[int], offsets: dict[int, int],
                  flat: dict[int, list[torch.Tensor]], failed: list[str | None], dtype: torch.dtype,
                  layer_weights: "LayerWeights | None", capture: list[LayerGroup] | None) -> np.ndarray:
    """Return the block's scores from the per-layer terms `flat`: network nodes by layer count."""
    n = len(blk.index)
    out = np.full(n, np.nan)
    # Each candidate's layers that carry the statistics, as positions in the flattened columns.
    rows = [[offsets[c] + r for c, r in blk.layout[k] if c in offsets] for k in range(n)]
    for k in range(n):
        if not rows[k] and failed[k] is None:
            failed[k] = "missing_stat"
    if not usable:
        return out
    values = {nid: torch.cat(parts).to(dtype) for nid, parts in flat.items()}
    params = torch.cat([blk.columns[c].params for c in usable]).to(dtype)
    by_count: dict[int, list[int]] = {}
    for k in range(n):
        if rows[k] and failed[k] is None:
            by_count.setdefault(len(rows[k]), []).append(k)
    for members in by_count.values():  # networks with as many layers are stacked [networks, layers]
        gather = torch.tensor([rows[k] for k in members], device=params.device)
        sub = [None] * len(members)
        per_layer = {nid: v[gather] for nid, v in values.items()}
        if layer_weights is not None or capture is not None:
            names = [[blk.columns[c].name for c, _ in blk.layout[k] if c in offsets] for k in members]
            if layer_weights is not None:
                w = torch.tensor(np.stack([layer_weights.for_layers(nm) for nm in names]), dtype=dtype,
                                 device=params.device)
                per_layer = {nid: v * w for nid, v in per_layer.items()}
        try:
            result = _run_network(plan, per_layer, params[gather], len(members), sub)
        except _ChunkFailed:
            result = None
        if capture is not None:
            ok = [j for j, k in enumerate(members) if sub[j] is None and failed[k] is None]
            if ok:
                keep = torch.tensor(ok, device=params.device)
                capture.append(LayerGroup(blk.index[[members[j] for j in ok]], [names[j] for j in ok],
                                          {nid: v[keep] for nid, v in per_layer.items()}, params[gather][keep]))
        for j, k in enumerate(members):
            failed[k] = sub[j]
            if sub[j] is None and result is not None:
                out[k] = result[j]
    return out


def _staged_terms(plan: _Plan, blk: _Block, usable: list[int], needed: set[str], failed: list[str | None],
                  dtype: torch.dtype, chunk_elements: int) -> dict[int, list[torch.Tensor]]:
    """Return what `_column_terms` returns, for a program with cross-layer ops (`primitives.layer_tensors`).

    Stage by stage (`_Plan.level`): a cross-layer node calls its op once per candidate on
    the list of its child's values in the candidate's usable layers; the network-wide
    nodes above it run once per candidate (candidates stacked by argument shapes); the
    other per-layer nodes of the stage run column by column as usual, a network-wide
    argument gathered for each member. Values a later stage reads are kept per column
    piece (the pieces of `_chunks`, the same at every stage).
    """
    n = len(blk.index)
    cols = [blk.columns[c] for c in usable]
    position = {c: i for i, c in enumerate(usable)}
    layers = [[(position[c], r) for c, r in blk.layout[k] if c in position] for k in range(n)]
    pieces_of = [_chunks(col, needed, chunk_elements) for col in cols]
    # Per-layer values read after their own stage: by a later stage, a cross-layer node, or an aggregation.
    carried = plan.to_net | {a for i in plan.layer_nodes for a in plan.args[i]
                             if i in plan.cross or plan.level[i] > plan.level[a]}
    kept: list[dict[int, list[Value | None]]] = [{} for _ in cols]  # column -> node -> value per piece
    wide: dict[int, list[torch.Tensor | None]] = {}  # network-wide node -> value per block candidate

    def row(ci: int, nid: int, r: int) -> torch.Tensor | None:
        node = plan.nodes[nid]
        if node.is_leaf:
            t, b = cols[ci].tensors[node.name]
            return t[r].to(dtype) if b else t.to(dtype)
        for (start, stop), value in zip(pieces_of[ci], kept[ci][nid]):
            if start <= r < stop:
                return None if value is None else (value[0][r - start] if value[1] else value[0])
        return None

    for level in sorted({plan.level[i] for i in plan.layer_nodes}):
        here = [i for i in plan.layer_nodes if plan.level[i] == level and not plan.nodes[i].is_leaf]
        for nid in here:  # network-wide nodes, in plan order (children first)
            if nid not in plan.wide:
                continue
            op = get_op(plan.nodes[nid].name)
            values: list[torch.Tensor | None] = [None] * n
            if nid in plan.cross:
                child = plan.args[nid][0]
                for k in range(n):
                    if failed[k] is not None or not layers[k]:
                        continue
                    parts = ([wide[child][k]] * len(layers[k]) if child in plan.wide
                             else [row(ci, child, r) for ci, r in layers[k]])
                    try:
                        if any(p is None for p in parts):
                            raise ValueError("an argument failed")
                        values[k] = op.fn(parts)
                    except Exception:
                        failed[k] = f"op_error:{op.name}"
            else:
                groups: dict[tuple, list[int]] = {}
                for k in range(n):
                    args = [wide[a][k] for a in plan.args[nid]]
                    if failed[k] is None and all(a is not None for a in args):
                        groups.setdefault(tuple(tuple(a.shape) for a in args), []).append(k)
                for members in groups.values():
                    sub: list[str | None] = [None] * len(members)
                    try:
                        t, _ = _apply(op.name, [(torch.stack([wide[a][k] for k in members]), True)
                                                for a in plan.args[nid]], len(members), sub, "network-wide")
                        for j, k in enumerate(members):
                            values[k] = t[j]
                    except _ChunkFailed:
                        pass
                    for j, k in enumerate(members):
                        if sub[j] is not None and failed[k] is None:
                            failed[k] = sub[j]
            wide[nid] = values
        todo = [i for i in here if i not in plan.wide]
        if not todo:
            continue
        inputs = {a for i in todo for a in plan.args[i]} - set(todo)
        keep = set(todo) & carried
        for ci, col in enumerate(cols):
            part = [failed[int(k)] for k in col.members]
            stored: dict[int, list[Value | None]] = {nid: [] for nid in keep}
            for start, stop in pieces_of[ci]:
                sub = part[start:stop]
                values = _piece_values(plan, todo, inputs, keep, col, kept[ci], wide, pieces_of[ci].index((start, stop)),
                                       start, stop, sub, dtype)
                part[start:stop] = sub
                for nid in keep:
                    stored[nid].append(None if values is None else values[nid])
            for k, reason in zip(col.members, part):
                if reason is not None and failed[int(k)] is None:
                    failed[int(k)] = reason
            kept[ci].update(stored)
    flat: dict[int, list[torch.Tensor]] = {nid: [] for nid in plan.to_net}
    for ci, col in enumerate(cols):
        nan = torch.tensor(math.nan, dtype=dtype, device=col.params.device)
        for nid in plan.to_net:
            if nid in plan.wide:
                flat[nid].append(torch.stack([nan if wide[nid][int(k)] is None else wide[nid][int(k)].to(dtype)
                                              for k in col.members]))
            else:
                flat[nid].append(torch.cat([
                    torch.full((stop - start,), math.nan, dtype=dtype, device=col.params.device) if value is None
                    else value[0].reshape(-1).to(dtype) if value[1] else value[0].reshape(()).to(dtype).expand(stop - start)
                    for (start, stop), value in zip(pieces_of[ci], kept[ci][nid])]))
    return flat


def _piece_values(plan: _Plan, todo: list[int], inputs: set[int], keep: set[int], col: _Column,
                  kept: dict[int, list[Value | None]], wide: dict[int, list[torch.Tensor | None]], piece: int,
                  start: int, stop: int, failed: list[str | None], dtype: torch.dtype) -> dict[int, Value] | None:
    """Return the `keep` values of per-layer nodes `todo` on a column's members [start, stop) (None: all failed).

    A network-wide argument is gathered per member; members whose arguments differ in
    shape are computed one by one.
    """
    count = stop - start
    given: dict[int, Value] = {}
    members = [int(k) for k in col.members[start:stop]]
    for a in inputs:
        node = plan.nodes[a]
        if node.is_leaf:
            t, b = col.tensors[node.name]
            given[a] = (t[start:stop].to(dtype), True) if b else (t.to(dtype), False)
        elif a in plan.wide:
            got = [wide[a][k] for k in members]
            template = next((g for g in got if g is not None), None)
            if template is None:
                return None
            if any(g is not None and g.shape != template.shape for g in got):
                if count == 1:
                    return None
                return _one_by_one(plan, todo, inputs, keep, col, kept, wide, piece, start, stop, failed, dtype)
            given[a] = (torch.stack([template if g is None else g for g in got]).to(dtype), True)
        else:
            value = kept[a][piece]
            if value is None:
                return None
            given[a] = value
    values = dict(given)
    left = Counter(a for i in todo for a in plan.args[i])
    try:
        for nid in todo:
            values[nid] = _apply(plan.nodes[nid].name, [values[a] for a in plan.args[nid]], count, failed,
                                 f"layer {col.name}")
            for a in plan.args[nid]:
                left[a] -= 1
                if left[a] == 0 and a not in keep and a not in given:
                    del values[a]
    except _ChunkFailed:
        return None
    return {nid: values[nid] for nid in keep}


def _one_by_one(plan: _Plan, todo: list[int], inputs: set[int], keep: set[int], col: _Column,
                kept: dict[int, list[Value | None]], wide: dict[int, list[torch.Tensor | None]], piece: int,
                start: int, stop: int, failed: list[str | None], dtype: torch.dtype) -> dict[int, Value] | None:
    """Return `_piece_values` of a piece computed member by member (their network-wide arguments differ in shape).

    A kept value whose shape differs between the members cannot be stacked for a later
    stage: those members fail as `shape:<op>`.
    """
    rows: list[dict[int, Value] | None] = []
    for j in range(stop - start):
        single = _Column(col.name, col.members[start + j:start + j + 1], col.stat_names,
                         {s: ((t[start + j:start + j + 1], True) if b else (t, False))
                          for s, (t, b) in col.tensors.items()}, col.params[start + j:start + j + 1])
        own = {a: [None if v is None else ((v[0][j:j + 1], True) if v[1] else v)] for a, v in
               ((a, pieces[piece]) for a, pieces in kept.items())}
        sub = failed[j:j + 1]
        rows.append(_piece_values(plan, todo, inputs, keep, single, own, wide, 0, 0, 1, sub, dtype))
        failed[j:j + 1] = sub
    if all(r is None for r in rows):
        return None
    out: dict[int, Value] = {}
    for nid in keep:
        each = [None if r is None else (r[nid][0][0] if r[nid][1] else r[nid][0]) for r in rows]
        template = next(e for e in each if e is not None)
        for j, e in enumerate(each):
            if e is not None and e.shape != template.shape:
                if failed[j] is None:
                    failed[j] = f"shape:{plan.nodes[nid].name}"
                each[j] = None
        out[nid] = (torch.stack([torch.full_like(template, math.nan) if e is None else e for e in each]), True)
    return out


def _run_network(plan: _Plan, per_layer: dict[int, torch.Tensor], params: torch.Tensor, n: int,
                 failed: list[str | None]) -> np.ndarray:
    """Evaluate the network nodes on `n` networks; `per_layer[nid]` is [n, layers], `params` [n, layers]."""
    return network_tensor(plan, per_layer, params, n, failed).detach().to(torch.float64).cpu().numpy()


def network_tensor(plan: _Plan, per_layer: dict[int, torch.Tensor], params: torch.Tensor, n: int,
                   failed: list[str | None]) -> torch.Tensor:
    """Return the network part's scores [n] as a tensor (differentiable in `per_layer`; used by `emq fit`)."""
    net: dict[int, Value] = {}
    for nid in plan.net_nodes:
        op = get_op(plan.nodes[nid].name)
        if op.is_aggregation:
            net[nid] = _apply(op.name, [(per_layer[plan.args[nid][0]], True), (params, True)], n, failed, "network")
        else:
            net[nid] = _apply(op.name, [net[a] for a in plan.args[nid]], n, failed, "network")
    t, batched = net[plan.output]
    return t.reshape(n) if batched else t.reshape(()).expand(n)


def _run_layer(plan: _Plan, tensors: dict[str, Value], start: int, stop: int,
               failed: list[str | None], dtype: torch.dtype, layer: str) -> dict[int, Value]:
    """Evaluate the per-layer nodes on the column's networks [start, stop)."""
    count = stop - start

    def leaf(v: Value) -> Value:
        t, b = v
        return (t[start:stop].to(dtype), True) if b else (t.to(dtype), False)

    values: dict[int, Value] = {}
    left = dict(plan.uses)
    # Values are dropped after their last use, so a piece holds only the live intermediates.
    for nid in plan.layer_nodes:
        node = plan.nodes[nid]
        if node.is_leaf:
            values[nid] = leaf(tensors[node.name])
            continue
        values[nid] = _apply(node.name, [values[a] for a in plan.args[nid]], count, failed, f"layer {layer}")
        for a in plan.args[nid]:
            left[a] -= 1
            if left[a] == 0 and a not in plan.to_net:
                del values[a]
    return {nid: values[nid] for nid in plan.to_net}


def _apply(name: str, args: list[Value], count: int, failed: list[str | None], where: str) -> Value:
    """Apply op `name` to (possibly batched) arguments; candidates whose op call fails are marked in `failed`."""
    op = get_op(name)
    tensors = [t for t, _ in args]
    dims = tuple(0 if b else None for _, b in args)
    reason = f"op_error:{name}"
    if not any(b for _, b in args):
        try:
            out = _unbatched(op, tensors)
        except Exception:  # same inputs for every candidate: every candidate fails alike
            _fail_all(failed, reason)
        return _check_shape(op, (out, False), failed)
    if count == 1 and not op.elementwise:
        # torch reduces a [1, K] tensor with other kernels than a [C, K] one (other rounding):
        # a lone network is computed as two identical rows, like any row of a larger piece.
        padded = [(torch.cat([t, t]), True) if b else (t, False) for t, b in args]
        pair = [failed[0], None]
        try:
            out, _ = _apply(name, padded, 2, pair, where)
        finally:
            failed[0] = pair[0]
        return (out[:1], True)
    if op.elementwise and _direct_ok(args):
        shape = next(t.shape for t, b in args if b)
        # `align` compares whole shapes: an unbatched per-network tensor must look stacked too (a view).
        direct = [t if b or t.numel() == 1 else t.expand(shape) for t, b in args]
        try:
            return _check_shape(op, (op.fn(*direct), True), failed)
        except Exception:
            pass  # a real failure on some candidates: the loop below tells which
    else:
        try:
            with warnings.catch_warnings():
                # ops without a batching rule (quantile) still run, through torch's slow fallback
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                out = vmap(op.fn, in_dims=dims)(*tensors)
            return _check_shape(op, (out, True), failed)
        except Exception:
            pass  # unsupported under vmap, or a real failure on some candidates: the loop tells which
    outs: list[torch.Tensor | None] = []
    for i in range(count):
        try:
            outs.append(op.fn(*[t[i] if b else t for t, b in args]))
        except Exception:
            outs.append(None)
            if failed[i] is None:
                failed[i] = reason
    ok = [o for o in outs if o is not None]
    if not ok:
        _fail_all(failed, reason)
    template = ok[0]
    try:
        out = torch.stack([o if o is not None else torch.full_like(template, math.nan) for o in outs])
    except RuntimeError:  # per-candidate shapes differ: the op is not shape-stable here
        _fail_all(failed, f"shape:{name}")
    return _check_shape(op, (out, True), failed)


def _unbatched(op, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Return op(*tensors) for inputs shared by every candidate, computed as a row of a batch.

    Entry-wise ops round the same whatever the shape. Others run vmapped over two
    identical rows, so the value equals what a batched candidate gets (the same
    kernel path); ops that cannot run under vmap run directly, as they do per candidate.
    """
    if op.elementwise:
        return op.fn(*tensors)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            return vmap(op.fn)(*[torch.stack([t, t]) for t in tensors])[0]
    except Exception:
        return op.fn(*tensors)


def _direct_ok(args: list[Value]) -> bool:
    """True when an elementwise op on the stacked tensors computes exactly the per-candidate results.

    Per candidate, `align` pairs equal shapes entry by entry and broadcasts a
    one-element argument. Stacked, that holds when every batched argument has the
    same shape and every unbatched one either has one element or the per-candidate
    shape of the batched ones (torch broadcasting then lines them up the same way).
    """
    batched = [t.shape for t, b in args if b]
    shape = batched[0]
    if any(s != shape for s in batched[1:]):
        return False
    return all(t.numel() == 1 or t.shape == shape[1:] for t, b in args if not b)


def _check_shape(op, value: Value, failed: list[str | None]) -> Value:
    t, batched = value
    if op.output == Kind.T:
        return value
    per_candidate = t.shape[1:] if batched else t.shape
    if math.prod(per_candidate) != 1:
        _fail_all(failed, f"shape:{op.name}")
    return (t.reshape(t.shape[0]) if batched else t.reshape(()), batched)


def _fail_all(failed: list[str | None], reason: str) -> None:
    for i, r in enumerate(failed):
        if r is None:
            failed[i] = reason
    raise _ChunkFailed


def evaluate_pieces(programs: Sequence["Proxy | Node"], pieces: Iterable[tuple[int, StackedStats]],
                    n: int) -> tuple[np.ndarray, list[Counter]]:
    """Return scores [program, candidate] of `programs` over `pieces` ((offset, stack) covering n candidates), and
    each program's failures; one piece is held at a time when `pieces` is a generator (streaming, shards)."""
    # Programs with rank aggregation are scored as their parts over every piece, then joined (emq.population).
    expansion = Expansion.of(programs)
    part_scores = np.full((len(expansion.parts), n), np.nan)
    part_reasons: list[list[str | None]] = [[None] * n for _ in expansion.parts]
    for offset, stacked in pieces:
        for k, part in enumerate(expansion.parts):
            root = part if isinstance(part, Node) else part.root
            weights = None if isinstance(part, Node) else part.layer_weights
            values, reasons = _scores_and_reasons(root, weights, stacked, torch.float32)
            part_scores[k, offset: offset + stacked.n] = values
            part_reasons[k][offset: offset + stacked.n] = reasons
    scores = np.full((len(programs), n), np.nan)
    failures = []
    for k, (split, where) in enumerate(zip(expansion.splits, expansion.where)):
        if split is None:
            scores[k], reasons = part_scores[where[0]], part_reasons[where[0]]
        else:
            scores[k] = join_scores(split, [part_scores[i] for i in where])
            reasons = join_reasons([part_reasons[i] for i in where])
        failures.append(_counted(scores[k], reasons))
    return scores, failures


def proxy_scores(proxy: "Proxy | Node", stats_list: Sequence[NetworkStats],
                 device: str | torch.device | None = None) -> tuple[np.ndarray, Counter]:
    """Return one score per network (NaN where the program failed) and the failures counted by reason."""
    return evaluate_stacked(proxy, StackedStats(stats_list, device))
