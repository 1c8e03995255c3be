"""Programs with cross-layer ops (`sum_layers_t`, ...), evaluated stage by stage over a block's columns.

A cross-layer op needs its argument in every layer of a candidate first, so such a
program runs in stages (`Plan.level`): the network-wide values are computed once per
candidate and read by every layer. `staged_terms` gives the evaluator
(`emq.evaluate`) the same per-layer terms its column-by-column path gives.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from emq.eval_plan import Plan
from emq.stacked_ops import ChunkFailed, apply_op
from emq.stacked_stats import Block, Column, Value, column_pieces
from primitives import get_op


@dataclass
class _Stages:
    """A block's values across stages: per column piece (`kept`) and per candidate for network-wide nodes (`wide`)."""

    plan: Plan
    cols: list[Column]
    #: per candidate: (position in `cols`, row in the column) of each of its usable layers, in its layer order
    layers: list[list[tuple[int, int]]]
    pieces_of: list[list[tuple[int, int]]]  # per column: its pieces (`column_pieces`, the same at every stage)
    failed: list[str | None]
    dtype: torch.dtype
    kept: list[dict[int, list[Value | None]]]  # column -> node -> value per piece
    wide: dict[int, list[torch.Tensor | None]] = field(default_factory=dict)  # node -> value per block candidate

    def row(self, ci: int, nid: int, r: int) -> torch.Tensor | None:
        """Return node `nid`'s value in row `r` of column `ci` (None where its piece failed)."""
        node = self.plan.nodes[nid]
        if node.is_leaf:
            t, b = self.cols[ci].tensors[node.name]
            return t[r].to(self.dtype) if b else t.to(self.dtype)
        for (start, stop), value in zip(self.pieces_of[ci], self.kept[ci][nid]):
            if start <= r < stop:
                return None if value is None else (value[0][r - start] if value[1] else value[0])
        return None


def staged_terms(plan: Plan, blk: Block, usable: list[int], needed: set[str], failed: list[str | None],
                 dtype: torch.dtype, chunk_elements: int) -> dict[int, list[torch.Tensor]]:
    """Return what `emq.evaluate`'s column-by-column path returns, for a program with cross-layer ops.

    Stage by stage (`Plan.level`): a cross-layer node calls its op once per candidate on
    the list of its child's values in the candidate's usable layers; the network-wide
    nodes above it run once per candidate (candidates stacked by argument shapes); the
    other per-layer nodes of the stage run column by column as usual, a network-wide
    argument gathered for each member. Values a later stage reads are kept per column
    piece (the pieces of `column_pieces`, the same at every stage).
    """
    cols = [blk.columns[c] for c in usable]
    position = {c: i for i, c in enumerate(usable)}
    layers = [[(position[c], r) for c, r in blk.layout[k] if c in position] for k in range(len(blk.index))]
    st = _Stages(plan, cols, layers, [column_pieces(col, needed, chunk_elements) for col in cols], failed, dtype,
                 [{} for _ in cols])
    # Per-layer values read after their own stage: by a later stage, a cross-layer node, or an aggregation.
    carried = plan.to_net | {a for i in plan.layer_nodes for a in plan.args[i]
                             if i in plan.cross or plan.level[i] > plan.level[a]}
    for level in sorted({plan.level[i] for i in plan.layer_nodes}):
        here = [i for i in plan.layer_nodes if plan.level[i] == level and not plan.nodes[i].is_leaf]
        for nid in here:  # network-wide nodes, in plan order (children first)
            if nid in plan.wide:
                st.wide[nid] = _cross_values(st, nid) if nid in plan.cross else _wide_values(st, nid)
        todo = [i for i in here if i not in plan.wide]
        if todo:
            _column_stage(st, todo, carried)
    return _flattened(st)


def _cross_values(st: _Stages, nid: int) -> list[torch.Tensor | None]:
    """Return cross-layer node `nid` per candidate: its op on the list of its child's values in the candidate's layers."""
    plan, failed = st.plan, st.failed
    op = get_op(plan.nodes[nid].name)
    values: list[torch.Tensor | None] = [None] * len(st.layers)
    child = plan.args[nid][0]
    for k, layers in enumerate(st.layers):
        if failed[k] is not None or not layers:
            continue
        parts = ([st.wide[child][k]] * len(layers) if child in plan.wide
                 else [st.row(ci, child, r) for ci, r in layers])
        try:
            if any(p is None for p in parts):
                raise ValueError("an argument failed")
            values[k] = op.fn(parts)
        except Exception:
            failed[k] = f"op_error:{op.name}"
    return values


def _wide_values(st: _Stages, nid: int) -> list[torch.Tensor | None]:
    """Return network-wide node `nid` per candidate, candidates with arguments of equal shapes stacked together."""
    plan, failed, wide = st.plan, st.failed, st.wide
    op = get_op(plan.nodes[nid].name)
    values: list[torch.Tensor | None] = [None] * len(st.layers)
    groups: dict[tuple, list[int]] = {}
    for k in range(len(st.layers)):
        args = [wide[a][k] for a in plan.args[nid]]
        if failed[k] is None and all(a is not None for a in args):
            groups.setdefault(tuple(tuple(a.shape) for a in args), []).append(k)
    for members in groups.values():
        sub: list[str | None] = [None] * len(members)
        try:
            t, _ = apply_op(op.name, [(torch.stack([wide[a][k] for k in members]), True)
                                      for a in plan.args[nid]], len(members), sub, "network-wide")
            for j, k in enumerate(members):
                values[k] = t[j]
        except ChunkFailed:
            pass
        for j, k in enumerate(members):
            if sub[j] is not None and failed[k] is None:
                failed[k] = sub[j]
    return values


def _column_stage(st: _Stages, todo: list[int], carried: set[int]) -> None:
    """Compute the stage's per-layer nodes `todo` column by column, piece by piece, keeping what is `carried`."""
    plan, failed = st.plan, st.failed
    inputs = {a for i in todo for a in plan.args[i]} - set(todo)
    keep = set(todo) & carried
    for ci, col in enumerate(st.cols):
        part = [failed[int(k)] for k in col.members]
        stored: dict[int, list[Value | None]] = {nid: [] for nid in keep}
        for piece, (start, stop) in enumerate(st.pieces_of[ci]):
            sub = part[start:stop]
            values = _piece_values(plan, todo, inputs, keep, col, st.kept[ci], st.wide, piece, start, stop, sub,
                                   st.dtype)
            part[start:stop] = sub
            for nid in keep:
                stored[nid].append(None if values is None else values[nid])
        for k, reason in zip(col.members, part):
            if reason is not None and failed[int(k)] is None:
                failed[int(k)] = reason
        st.kept[ci].update(stored)


def _flattened(st: _Stages) -> dict[int, list[torch.Tensor]]:
    """Return, per usable column, the [m] values of the nodes aggregations read (NaN where a piece failed)."""
    plan, dtype = st.plan, st.dtype
    flat: dict[int, list[torch.Tensor]] = {nid: [] for nid in plan.to_net}
    for ci, col in enumerate(st.cols):
        nan = torch.tensor(math.nan, dtype=dtype, device=col.params.device)
        for nid in plan.to_net:
            if nid in plan.wide:
                flat[nid].append(torch.stack([nan if st.wide[nid][int(k)] is None else st.wide[nid][int(k)].to(dtype)
                                              for k in col.members]))
            else:
                flat[nid].append(torch.cat([
                    torch.full((stop - start,), math.nan, dtype=dtype, device=col.params.device) if value is None
                    else value[0].reshape(-1).to(dtype) if value[1] else value[0].reshape(()).to(dtype).expand(stop - start)
                    for (start, stop), value in zip(st.pieces_of[ci], st.kept[ci][nid])]))
    return flat


def _piece_values(plan: Plan, todo: list[int], inputs: set[int], keep: set[int], col: Column,
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
            values[nid] = apply_op(plan.nodes[nid].name, [values[a] for a in plan.args[nid]], count, failed,
                                 f"layer {col.name}")
            for a in plan.args[nid]:
                left[a] -= 1
                if left[a] == 0 and a not in keep and a not in given:
                    del values[a]
    except ChunkFailed:
        return None
    return {nid: values[nid] for nid in keep}


def _one_by_one(plan: Plan, todo: list[int], inputs: set[int], keep: set[int], col: Column,
                kept: dict[int, list[Value | None]], wide: dict[int, list[torch.Tensor | None]], piece: int,
                start: int, stop: int, failed: list[str | None], dtype: torch.dtype) -> dict[int, Value] | None:
    """Return `_piece_values` of a piece computed member by member (their network-wide arguments differ in shape).

    A kept value whose shape differs between the members cannot be stacked for a later
    stage: those members fail as `shape:<op>`.
    """
    rows: list[dict[int, Value] | None] = []
    for j in range(stop - start):
        single = Column(col.name, col.members[start + j:start + j + 1], col.stat_names,
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
