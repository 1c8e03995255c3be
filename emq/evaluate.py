"""The one evaluator of proxy programs: statistics stacked across candidates, ops applied once per layer.

Every score in EMQ comes from here: the search, `emq score`, `emq apply`, program
baselines, and `Proxy.evaluate` (one network is the n = 1 case). Each layer of the
candidates of a block is one column (`emq.stacked_stats`), its statistics stacked along
a leading candidate dimension, and each distinct subprogram (`emq.eval_plan`) is
computed once per column and piece of candidates (a subtree used twice is evaluated
once: work is linear in the program's distinct nodes). Each op runs on the stacked
tensors directly or under `torch.func.vmap`, and is retried network by network when
that fails, which also tells which networks fail (`emq.stacked_ops`).

A candidate's score depends only on its block (shards made of whole blocks give the
same float32 scores as the whole set; tested), and failures are reported per
candidate with a countable reason.

Two op families reach beyond one layer or one network. A cross-layer op
(`sum_layers_t`, ...) needs its argument in every layer of a candidate first, so a
program using one runs in stages (`emq.cross_layer_eval`): the network-wide values are
computed once per candidate and read by every layer. A population op (`n_rank_log`,
...) needs every candidate's score first, so its program is scored as its parts and
joined over the whole set (`emq.population`), never within a block, piece or shard.

On a stack with sketches (`emq.sketch`, `--sketch K`), a program that can read them is
scored, in each layer where what it reads is sketched alike, on the K-entry samples, its
reductions estimating their full values. On a stack with slices too (`--sketch-slices`), a
program that cannot read sketches but has no cross-layer op reads the slices instead
(sub-tensors of at most K entries); any other program or layer reads the full tensors.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Iterable, Protocol, Sequence

import numpy as np
import torch

from emq.cross_layer_eval import staged_terms
from emq.eval_plan import Plan
from emq.layer_weights import LayerWeights
from emq.population import Expansion, join_reasons, join_scores, refuse_population, split_population
from emq.program import Node
from emq.sketch import estimate, per_candidate_shape, sketch_ratio, sketchable, sliceable
from emq.stacked_ops import ChunkFailed, apply_op
from emq.stacked_stats import (
    MIN_BLOCK, Block, Column, StackedStats, Value, block_for, concat_rows, piece_bounds,
)
from emq.subprogram_memo import SubprogramMemo
from emq.stats import NetworkStats
from primitives import Kind, get_op

# StackedStats and its block size are part of the evaluator's interface: callers build the stack they pass in.
__all__ = ["MIN_BLOCK", "LayerGroup", "Scorable", "StackedStats", "block_for", "evaluate_pieces", "evaluate_stacked",
           "layer_groups", "network_tensor", "proxy_scores"]


class Scorable(Protocol):
    """What the evaluator reads of a proxy (`emq.proxy.Proxy`): its program, and its fitted layer weights if any."""

    @property
    def root(self) -> Node: ...

    @property
    def layer_weights(self) -> LayerWeights | None: ...


def evaluate_stacked(proxy: Scorable | Node, stacked: StackedStats,
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


def _scores_and_reasons(root: Node, weights: LayerWeights | None, stacked: StackedStats,
                        dtype: torch.dtype) -> tuple[np.ndarray, list[str | None]]:
    """Return one score per network of a program without population ops, and each network's failure reason (or None)."""
    scores = np.full(stacked.n, np.nan)
    reasons: list[str | None] = [None] * stacked.n
    plan = Plan.of(root)
    needed = root.stats()
    sketch = reading(root, stacked)
    for b, blk in enumerate(stacked.blocks):
        failed: list[str | None] = [None] * len(blk.index)
        out = _run_block(plan, blk, needed, failed, dtype, stacked.chunk_elements, weights, sketch=sketch,
                         memo=stacked.memo, scope=(stacked.memo_scope, b))
        for k, pos in enumerate(blk.index):
            reasons[int(pos)] = failed[k]
            if failed[k] is None:
                scores[int(pos)] = float(out[k])
    return scores, reasons


def reading(root: Node, stacked: StackedStats) -> str | None:
    """Return which samples of the large statistics a program reads on `stacked`: "sketch" (K-entry samples,
    `emq.sketch.sketchable`), "slices" (sub-tensors, `sliceable`, on a stack with slices), or None (full tensors)."""
    if stacked.sketch <= 0:
        return None
    if sketchable(root):
        return "sketch"
    return "slices" if stacked.slices and sliceable(root) else None


def _samples(col: Column, sketch: str | None) -> dict[str, Value]:
    """Return the column's samples a program reading `sketch` reads (empty for None)."""
    return col.sketch if sketch == "sketch" else col.slices if sketch == "slices" else {}


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


def layer_groups(proxy: Scorable | Node, stacked: StackedStats,
                 dtype: torch.dtype = torch.float32) -> tuple[Plan, list[LayerGroup]]:
    """Return the program's plan and its per-layer terms, grouped for `network_tensor`.

    This is the evaluator stopped before the network part, so `emq fit` can weight the
    terms and differentiate the rest; candidates that failed are in no group.
    """
    root = proxy if isinstance(proxy, Node) else proxy.root
    refuse_population(root, "a per-network fit of its layer terms")
    plan = Plan.of(root)
    needed = root.stats()
    groups: list[LayerGroup] = []
    for blk in stacked.blocks:
        failed: list[str | None] = [None] * len(blk.index)
        _run_block(plan, blk, needed, failed, dtype, stacked.chunk_elements, capture=groups)
    return plan, groups


def _run_block(plan: Plan, blk: Block, needed: set[str], failed: list[str | None], dtype: torch.dtype,
               chunk_elements: int, layer_weights: LayerWeights | None = None,
               capture: list[LayerGroup] | None = None, sketch: str | None = None,
               memo: SubprogramMemo | None = None, scope: Hashable = 0) -> np.ndarray:
    """Return the block's scores (failures marked in `failed`): per-layer nodes by column, network nodes by layer count.

    `sketch`: which samples the program may read (`reading`; None: the full tensors). `memo`: the stack's subprogram
    memo (`emq.subprogram_memo`), `scope` where the block sits in what the memo serves.
    """
    usable = [c for c, col in enumerate(blk.columns) if needed <= col.stat_names]
    offsets: dict[int, int] = {}
    size = 0
    for c in usable:
        offsets[c] = size
        size += len(blk.columns[c].members)
    if plan.cross:
        flat = staged_terms(plan, blk, usable, needed, failed, dtype, chunk_elements)
    else:
        flat = _column_terms(plan, blk, usable, needed, failed, dtype, chunk_elements, sketch, memo, scope)
    return _network_part(plan, blk, usable, offsets, flat, failed, dtype, layer_weights, capture)


def _column_terms(plan: Plan, blk: Block, usable: list[int], needed: set[str], failed: list[str | None],
                  dtype: torch.dtype, chunk_elements: int, sketch: str | None = None,
                  memo: SubprogramMemo | None = None, scope: Hashable = 0) -> dict[int, list[torch.Tensor]]:
    """Return, per usable column, the [m] values of the per-layer nodes aggregations read.

    Columns are evaluated together, one stack per shape of what the program reads
    (`_shape_groups`), so one op call serves every layer of that shape in the block
    (NAS-Bench-201: about 20 calls per op and block instead of 190). With `sketch` (the
    program reads sketches) every sketch has K entries whatever its layer's size, so the
    sketched layers mostly form one stack.
    """
    values: dict[int, dict[int, torch.Tensor]] = {}
    groups = _shape_groups(blk, usable, needed, sketch)
    for group in groups:
        if len(group) == 1:
            continue  # alone: evaluated as a column below
        cols = [blk.columns[c] for c, _ in group]
        samples = [{} if r is None else _samples(col, sketch) for col, (_, r) in zip(cols, group)]
        # Rows of one shape sit side by side in the stack (`share_rows`): most stacks here are views, not copies.
        tensors = {s: (concat_rows([t if b else t.unsqueeze(0).expand(len(col.members), *t.shape)
                                    for col, read in zip(cols, samples) for t, b in [read.get(s) or col.tensors[s]]]),
                       True) for s in needed}
        members = np.concatenate([col.members for col in cols])
        sketched = None
        if group[0][1] is not None:  # the group reads sketches (all its columns do, by its key)
            ratio = torch.cat([torch.full((len(col.members),), r, dtype=torch.float64)
                               for col, (_, r) in zip(cols, group)])
            sketched = (ratio, {s for s in needed if s in _samples(cols[0], sketch)})
        terms = _member_terms(plan, tensors, members, failed, dtype, chunk_elements,
                              f"layers {cols[0].name} .. {cols[-1].name}", needed, sketched,
                              memo, (scope, tuple(c for c, _ in group), sketched is not None and sketch, dtype))
        offset = 0
        for col, (c, _) in zip(cols, group):
            m = len(col.members)
            values[c] = {nid: t[offset: offset + m] for nid, t in terms.items()}
            offset += m
    for (c, ratio), in (g for g in groups if len(g) == 1):
        col = blk.columns[c]
        tensors = col.tensors if ratio is None else {**col.tensors, **_samples(col, sketch)}
        values[c] = _member_terms(plan, tensors, col.members, failed, dtype, chunk_elements, f"layer {col.name}",
                                  needed, (ratio, set(_samples(col, sketch))) if ratio is not None else None,
                                  memo, (scope, (c,), ratio is not None and sketch, dtype))
    return {nid: [values[c][nid] for c in usable] for nid in plan.to_net}


def _shape_groups(blk: Block, usable: list[int], needed: set[str],
                  sketch: str | None) -> list[list[tuple[int, float | None]]]:
    """Return the usable columns as (column, n / K or None: read in full), grouped to be stacked.

    Columns whose statistics read (sampled alike, or all in full; `sketch`: the samples
    the program may read, `reading`) have the same per-candidate shapes and dtypes stack into one
    tensor per statistic: each row is computed as in its own column (entry-wise ops and
    per-row ops under vmap), with one op call for the group; scores are bit-identical to
    evaluating column by column (checked on NAS-Bench-201 programs). The groups are a
    function of the block alone, so shards still give the same scores as the whole set.
    """
    known = blk.groups.get((frozenset(needed), sketch))
    if known is not None:
        return known
    groups: dict[tuple, list[tuple[int, float | None]]] = {}
    for c in usable:
        col = blk.columns[c]
        ratio = sketch_ratio(needed, col.tensors, _samples(col, sketch)) if sketch else None
        read = col.tensors if ratio is None else {**col.tensors, **_samples(col, sketch)}
        key = (ratio is None, *((s, per_candidate_shape(read[s]), read[s][0].dtype) for s in sorted(needed)))
        groups.setdefault(key, []).append((c, ratio))
    blk.groups[(frozenset(needed), sketch)] = out = list(groups.values())
    return out


def _member_terms(plan: Plan, tensors: dict[str, Value], members: np.ndarray, failed: list[str | None],
                  dtype: torch.dtype, chunk_elements: int, where: str, needed: set[str],
                  sketch: tuple[float | torch.Tensor, set[str]] | None, memo: SubprogramMemo | None = None,
                  memo_where: tuple | None = None) -> dict[int, torch.Tensor]:
    """Return the [m] values of the per-layer nodes aggregations read, for the rows `members` of `tensors`.

    Evaluated in pieces (`piece_bounds`); a row's failure is written to its candidate in `failed`. With a `memo`,
    per-layer scalar subprograms computed before at the same place (`memo_where` and the pieces) are read from it,
    and the ones computed here are kept in it when no row failed.
    """
    m = len(members)
    part = [failed[int(k)] for k in members]
    bounds = piece_bounds(m, tensors, needed, chunk_elements)
    known: dict[int, list[Value]] = {}
    keep: frozenset[int] = frozenset()
    if memo is not None:
        memo_where = (memo_where, tuple(bounds))
        scalars = plan.scalar_nodes
        for nid in scalars:
            found = memo.get(memo_where, plan.nodes[nid])
            if found is not None:
                known[nid] = found
        keep = frozenset(scalars) - set(known)
    computed: dict[int, list[Value]] = {nid: [] for nid in keep}
    pieces: dict[int, list[torch.Tensor]] = {nid: [] for nid in plan.to_net}
    for p, (start, stop) in enumerate(bounds):
        sub = part[start:stop]
        try:
            values = _run_layer(plan, tensors, start, stop, sub, dtype, where, sketch,
                                {nid: v[p] for nid, v in known.items()}, keep)
        except ChunkFailed:
            values = {nid: (torch.full((stop - start,), math.nan, dtype=dtype), True) for nid in plan.to_net}
        part[start:stop] = sub
        for nid in computed:
            if nid in values:
                computed[nid].append(values[nid])
        for nid in plan.to_net:
            t, b = values[nid]
            pieces[nid].append(t.reshape(-1) if b else t.reshape(()).expand(stop - start))
    if memo is not None and all(r is None for r in part):
        for nid, per_piece in computed.items():
            if len(per_piece) == len(bounds):
                memo.put(memo_where, plan.nodes[nid], per_piece)
    for k, reason in zip(members, part):
        if reason is not None and failed[int(k)] is None:
            failed[int(k)] = reason
    return {nid: torch.cat(parts) if len(parts) > 1 else parts[0].reshape(m) for nid, parts in pieces.items()}


def _network_part(plan: Plan, blk: Block, usable: list[int], offsets: dict[int, int],
                  flat: dict[int, list[torch.Tensor]], failed: list[str | None], dtype: torch.dtype,
                  layer_weights: LayerWeights | None, capture: list[LayerGroup] | None) -> np.ndarray:
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
        except ChunkFailed:
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


def _run_network(plan: Plan, per_layer: dict[int, torch.Tensor], params: torch.Tensor, n: int,
                 failed: list[str | None]) -> np.ndarray:
    """Evaluate the network nodes on `n` networks; `per_layer[nid]` is [n, layers], `params` [n, layers]."""
    return network_tensor(plan, per_layer, params, n, failed).detach().to(torch.float64).cpu().numpy()


def network_tensor(plan: Plan, per_layer: dict[int, torch.Tensor], params: torch.Tensor, n: int,
                   failed: list[str | None]) -> torch.Tensor:
    """Return the network part's scores [n] as a tensor (differentiable in `per_layer`; used by `emq fit`)."""
    net: dict[int, Value] = {}
    for nid in plan.net_nodes:
        op = get_op(plan.nodes[nid].name)
        if op.is_aggregation:
            net[nid] = apply_op(op.name, [(per_layer[plan.args[nid][0]], True), (params, True)], n, failed, "network")
        else:
            net[nid] = apply_op(op.name, [net[a] for a in plan.args[nid]], n, failed, "network")
    t, batched = net[plan.output]
    return t.reshape(n) if batched else t.reshape(()).expand(n)


def _run_layer(plan: Plan, tensors: dict[str, Value], start: int, stop: int,
               failed: list[str | None], dtype: torch.dtype, where: str,
               sketch: tuple[float | torch.Tensor, set[str]] | None = None,
               given: dict[int, Value] | None = None, keep: frozenset[int] = frozenset()) -> dict[int, Value]:
    """Evaluate the per-layer nodes on the rows [start, stop) of `tensors` (a column's networks).

    `sketch` (n / K, one number or one per row; the sketched statistics): those leaves
    are K-entry samples, and a reduction of a value computed from them returns its
    estimate of the full value. `given`: values of some nodes on these rows (a subprogram
    memo's), whose subtrees are not computed; `keep`: nodes whose values are returned too.
    """
    count = stop - start
    ratio = None
    if sketch is not None:
        ratio = sketch[0][start:stop] if isinstance(sketch[0], torch.Tensor) else sketch[0]
    sampled: set[int] = set()  # nodes whose value is a sample of the full one

    def leaf(v: Value) -> Value:
        t, b = v
        return (t[start:stop].to(dtype), True) if b else (t.to(dtype), False)

    values: dict[int, Value] = {}
    given = given or {}
    order = plan.live_nodes(set(given)) if given else plan.layer_nodes
    left = Counter(a for i in order if i not in given for a in plan.args[i]) if given else dict(plan.uses)
    # Values are dropped after their last use, so a piece holds only the live intermediates.
    for nid in order:
        node = plan.nodes[nid]
        if nid in given:
            values[nid] = given[nid]
            continue
        if node.is_leaf:
            values[nid] = leaf(tensors[node.name])
            if sketch is not None and node.name in sketch[1]:
                sampled.add(nid)
            continue
        values[nid] = apply_op(node.name, [values[a] for a in plan.args[nid]], count, failed, where)
        if sketch is not None and any(a in sampled for a in plan.args[nid]):
            op = get_op(node.name)
            if op.output == Kind.T:
                sampled.add(nid)
            else:
                t, b = values[nid]
                values[nid] = (estimate(op.sketch, t, ratio), b)
        for a in plan.args[nid]:
            left[a] -= 1
            if left[a] == 0 and a not in plan.to_net and a not in keep:
                del values[a]
    return {nid: values[nid] for nid in plan.to_net | keep if nid in values}


def evaluate_pieces(programs: Sequence[Scorable | Node], pieces: Iterable[tuple[int, StackedStats]],
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


def proxy_scores(proxy: Scorable | Node, stats_list: Sequence[NetworkStats],
                 device: str | torch.device | None = None) -> tuple[np.ndarray, Counter]:
    """Return one score per network (NaN where the program failed) and the failures counted by reason."""
    return evaluate_stacked(proxy, StackedStats(stats_list, device))
