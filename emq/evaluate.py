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
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import torch
from torch.func import vmap

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

    @classmethod
    def of(cls, root: Node) -> "_Plan":
        nodes = root.unique()
        where = {node: i for i, node in enumerate(nodes)}
        args = [tuple(where[c] for c in node.children) for node in nodes]
        layer_nodes = [i for i, node in enumerate(nodes) if node.kind != Kind.N]
        net_nodes = [i for i, node in enumerate(nodes) if node.kind == Kind.N]
        uses = Counter(a for i in layer_nodes for a in args[i])
        to_net = {args[i][0] for i in net_nodes if get_op(nodes[i].name).is_aggregation}
        return cls(nodes, args, where[root], layer_nodes, net_nodes, uses, to_net)


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
    failures = Counter(r for r in reasons if r is not None)
    failures["nonfinite"] += int(np.sum(~np.isfinite(scores))) - sum(failures.values())
    return scores, +failures


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
    n = len(blk.index)
    usable = [c for c, col in enumerate(blk.columns) if needed <= col.stat_names]
    # Per column and per-layer node read by an aggregation: its value for each member, [m].
    flat: dict[int, list[torch.Tensor]] = {nid: [] for nid in plan.to_net}
    offsets: dict[int, int] = {}
    size = 0
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
        offsets[c] = size
        size += m
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
    scores = np.full((len(programs), n), np.nan)
    failures = [Counter() for _ in programs]
    for offset, stacked in pieces:
        for k, program in enumerate(programs):
            values, failed = evaluate_stacked(program, stacked)
            scores[k, offset: offset + stacked.n] = values
            failures[k].update(failed)
    return scores, failures


def proxy_scores(proxy: "Proxy | Node", stats_list: Sequence[NetworkStats],
                 device: str | torch.device | None = None) -> tuple[np.ndarray, Counter]:
    """Return one score per network (NaN where the program failed) and the failures counted by reason."""
    return evaluate_stacked(proxy, StackedStats(stats_list, device))
