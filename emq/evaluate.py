"""The one evaluator of proxy programs: statistics stacked across candidates, ops applied once per layer.

Every score in EMQ comes from here: the search, `emq score`, `emq apply`, program
baselines, and `Proxy.evaluate` (one network is the n = 1 case). Each statistic of
each layer is stacked into one tensor with a leading candidate dimension, and each
distinct subprogram is computed once per layer and piece of candidates (a subtree
used twice is evaluated once: work is linear in the program's distinct nodes).
Ops marked `elementwise` in the registry run directly on the stacked tensor, the
others through `torch.func.vmap` over the candidate dimension. Statistics equal in every
candidate (the full-precision weights of a mixed-precision benchmark) stay
unstacked, so the subprograms that only read them are computed once.

Pieces hold about CHUNK_ELEMENTS entries per intermediate, so a chain of ops on a
piece stays in cache and memory is bounded; where fewer than MIN_BATCH networks
fit (large activations), each network runs on its own. An
op that fails under vmap is retried network by network for that node only, which
also tells which networks fail.

A candidate's score does not depend on which other candidates share its stack
(shards of any size give the same float32 scores; tested), and failures are
reported per candidate with a countable reason.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import vmap

from emq.program import Node
from emq.stats import NetworkStats
from primitives import Kind, get_op

if TYPE_CHECKING:  # the Proxy class evaluates through this module
    from emq.proxy import Proxy

#: Entries one intermediate tensor of a piece of candidates may hold (bounds memory, keeps pieces in cache).
CHUNK_ELEMENTS = 1 << 20
#: Candidates per stacking block: shards made of whole blocks score bit-identically to the whole set.
BLOCK = 32
#: Fewest networks in a piece (a lone network is computed as a piece of two copies, see `_call`).
MIN_BATCH = 2
Value = tuple[torch.Tensor, bool]  # (tensor, batched: has the leading candidate dimension)


@dataclass
class _Group:
    """Candidates with the same layers, statistics and shapes."""

    index: np.ndarray  # positions in the original list
    layers: list[str]
    stat_names: dict[str, frozenset[str]]
    tensors: dict[str, dict[str, Value]]
    params: Value  # per-layer parameter counts, [C, L] batched or [L]


class StackedStats:
    """Statistics of many networks, stacked per (layer, statistic) along a leading candidate dimension.

    Candidates are stacked in blocks of `block` consecutive positions (and, within a
    block, by layout). A block is computed the same way whichever other blocks sit
    beside it, so a shard made of whole blocks gives bit-identical scores to the whole
    set: torch's vectorised kernels round an entry differently depending on where it
    sits in a tensor, so a candidate must sit at the same place in every run.
    """

    def __init__(self, stats_list: Sequence[NetworkStats], device: str | torch.device | None = None,
                 chunk_elements: int = CHUNK_ELEMENTS, block: int | None = None) -> None:
        self.n = len(stats_list)
        self.chunk_elements = chunk_elements
        self.block = BLOCK if block is None else block
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        by_layout: dict[tuple, list[int]] = {}
        for i, s in enumerate(stats_list):
            by_layout.setdefault((i // self.block, _layout(s)), []).append(i)
        self.groups = [self._stack([stats_list[i] for i in idx], np.array(idx)) for idx in by_layout.values()]

    def _stack(self, items: list[NetworkStats], index: np.ndarray) -> _Group:
        first = items[0]
        single = len(items) == 1
        layers = list(first.layers)
        tensors: dict[str, dict[str, Value]] = {}
        for layer in layers:
            tensors[layer] = {}
            for stat, t0 in first.layers[layer].items():
                column = [s.layers[layer][stat] for s in items]
                if single or all(t is t0 or (t.dtype == t0.dtype and torch.equal(t, t0)) for t in column[1:]):
                    tensors[layer][stat] = (t0.to(self.device), False)
                else:
                    dtype = t0.dtype if all(t.dtype == t0.dtype for t in column) else torch.float32
                    tensors[layer][stat] = (torch.stack([t.to(dtype) for t in column]).to(self.device), True)
        rows = [[float(s.params.get(name, 0)) for name in layers] for s in items]
        if single or all(r == rows[0] for r in rows[1:]):
            params: Value = (torch.tensor(rows[0], dtype=torch.float64, device=self.device), False)
        else:
            params = (torch.tensor(rows, dtype=torch.float64, device=self.device), True)
        stat_names = {layer: frozenset(first.layers[layer]) for layer in layers}
        return _Group(index, layers, stat_names, tensors, params)

    def subset(self, positions: Sequence[int]) -> "StackedStats":
        """Return the stacked statistics of some candidates (by position), sharing storage where possible."""
        out = StackedStats.__new__(StackedStats)
        out.n = len(positions)
        out.chunk_elements = self.chunk_elements
        out.block = self.block
        out.device = self.device
        out.groups = []
        where = {int(p): k for k, p in enumerate(positions)}
        for g in self.groups:
            local = [j for j, i in enumerate(g.index) if int(i) in where]
            if not local:
                continue
            sel = torch.tensor(local, device=self.device)
            take = (lambda v: (v[0].index_select(0, sel), True) if v[1] else v)
            out.groups.append(_Group(
                index=np.array([where[int(g.index[j])] for j in local]),
                layers=g.layers, stat_names=g.stat_names,
                tensors={layer: {s: take(v) for s, v in d.items()} for layer, d in g.tensors.items()},
                params=take(g.params),
            ))
        return out

    def total_params(self) -> np.ndarray:
        """Return each network's parameter count (the sum over its layers), in position order."""
        out = np.zeros(self.n, dtype=np.float64)
        for g in self.groups:
            values, batched = g.params
            out[g.index] = values.sum(-1).cpu().numpy() if batched else float(values.sum())
        return out

    def nbytes(self) -> int:
        """Return the bytes held by the stacked tensors."""
        total = 0
        for g in self.groups:
            for d in g.tensors.values():
                total += sum(t.numel() * t.element_size() for t, _ in d.values())
        return total


def _layout(stats: NetworkStats) -> tuple:
    return tuple((layer, tuple(sorted((k, tuple(v.shape)) for k, v in d.items()))) for layer, d in stats.layers.items())


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
    the program reads, or `nonfinite` (its score is then kept as computed).
    """
    root = proxy if isinstance(proxy, Node) else proxy.root
    scores = np.full(stacked.n, np.nan)
    reasons: list[str | None] = [None] * stacked.n
    plan = _Plan.of(root)
    needed = root.stats()
    for group in stacked.groups:
        layers = [layer for layer in group.layers if needed <= group.stat_names[layer]]
        n = len(group.index)
        failed: list[str | None] = [None] * n
        out = None
        if not layers:
            failed = ["missing_stat"] * n
        else:
            try:
                out = _run_group(plan, group, layers, needed, failed, dtype, stacked.chunk_elements)
            except _ChunkFailed:
                pass
        for k in range(n):
            pos = int(group.index[k])
            reasons[pos] = failed[k]
            if failed[k] is None and out is not None:
                scores[pos] = float(out[k])
    failures = Counter(r for r in reasons if r is not None)
    failures["nonfinite"] += int(np.sum(~np.isfinite(scores))) - sum(failures.values())
    return scores, +failures


def _chunks(group: _Group, layer: str, needed: set[str], chunk_elements: int) -> list[tuple[int, int, bool]]:
    """Return (start, stop, batched) pieces covering the group's candidates for one layer.

    Pieces are sized so one intermediate holds about `chunk_elements` entries (at
    least two networks): the chain of ops on a piece stays in cache and memory is
    bounded. How a piece is computed never depends on how many candidates the stack
    holds, so a shard of any size gives the same scores.
    """
    n = len(group.index)
    widths = [t[0].numel() for s, (t, b) in group.tensors[layer].items() if b and s in needed]
    if not widths:
        return [(0, n, True)]  # nothing per-network in this layer: computed once
    size = max(MIN_BATCH, chunk_elements // max(widths))
    return [(a, min(n, a + size), True) for a in range(0, n, size)]


def _run_group(plan: _Plan, group: _Group, layers: list[str], needed: set[str], failed: list[str | None],
               dtype: torch.dtype, chunk_elements: int) -> np.ndarray:
    n = len(group.index)
    per_layer: dict[int, list[Value]] = {nid: [] for nid in plan.to_net}
    for layer in layers:
        pieces: dict[int, list[Value]] = {nid: [] for nid in plan.to_net}
        chunks = _chunks(group, layer, needed, chunk_elements)
        for start, stop, batched in chunks:
            part = failed[start:stop]
            try:
                values = _run_layer(plan, group.tensors[layer], start, stop, batched, part, dtype, layer)
            except _ChunkFailed:
                values = {nid: (torch.full((stop - start,), math.nan, dtype=dtype), True) for nid in plan.to_net}
            failed[start:stop] = part
            for nid, v in values.items():
                pieces[nid].append(v)
        for nid, parts in pieces.items():
            if len(parts) == 1:
                per_layer[nid].append(parts[0])
            else:
                sizes = [stop - start for start, stop, _ in chunks]
                per_layer[nid].append((torch.cat([t.reshape(-1) if b else t.reshape(()).expand(k)
                                                  for (t, b), k in zip(parts, sizes)]), True))
    if all(f is not None for f in failed):
        raise _ChunkFailed
    params_t, params_b = group.params
    columns = [group.layers.index(layer) for layer in layers]
    params: Value = ((params_t[:, columns] if params_b else params_t[columns]).to(dtype), params_b)
    net: dict[int, Value] = {}
    for nid in plan.net_nodes:
        op = get_op(plan.nodes[nid].name)
        if op.is_aggregation:
            parts = per_layer[plan.args[nid][0]]
            if any(b for _, b in parts):
                stacked = (torch.stack([t if b else t.expand(n) for t, b in parts], dim=1), True)
            else:
                stacked = (torch.stack([t for t, _ in parts]), False)
            net[nid] = _apply(op.name, [stacked, params], n, failed, "network")
        else:
            net[nid] = _apply(op.name, [net[a] for a in plan.args[nid]], n, failed, "network")
    t, batched = net[plan.output]
    t = t.reshape(n) if batched else t.reshape(()).expand(n)
    return t.detach().to(torch.float64).cpu().numpy()


def _run_layer(plan: _Plan, tensors: dict[str, Value], start: int, stop: int, batched: bool,
               failed: list[str | None], dtype: torch.dtype, layer: str) -> dict[int, Value]:
    """Evaluate the per-layer nodes on networks [start, stop) (one network unbatched when `batched` is False)."""
    count = stop - start

    def leaf(v: Value) -> Value:
        t, b = v
        if not b:
            return t.to(dtype), False
        return (t[start:stop].to(dtype), True) if batched else (t[start].to(dtype), False)

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


def proxy_scores(proxy: "Proxy | Node", stats_list: Sequence[NetworkStats],
                 device: str | torch.device | None = None) -> tuple[np.ndarray, Counter]:
    """Return one score per network (NaN where the program failed) and the failures counted by reason."""
    return evaluate_stacked(proxy, StackedStats(stats_list, device))
