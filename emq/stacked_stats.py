"""Statistics of many networks stacked per layer along a leading candidate dimension, in blocks (`StackedStats`).

Each layer of the candidates of a block is one column, its statistics stacked along a
leading candidate dimension; statistics equal in every member of a column (the
full-precision weights of a mixed-precision benchmark) stay unstacked, so what only
reads them is computed once. A column is computed in pieces (`column_pieces`) of about
CHUNK_ELEMENTS entries per intermediate (and at least MIN_BATCH networks), so a chain
of ops on a piece stays in cache and memory is bounded. A stack built with `sketch` K
also holds, per column, K-entry samples of its large positional statistics (`emq.sketch`),
and with `slices` their sub-tensor slices of at most K entries.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Hashable, Sequence

import numpy as np
import torch

from emq.sketch import slice_tensors, sketch_tensors
from emq.subprogram_memo import SubprogramMemo
from emq.stats import NetworkStats

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


#: Fewest networks in a piece (a lone network is computed as a piece of two copies, see `emq.stacked_ops.apply_op`).
MIN_BATCH = 2
Value = tuple[torch.Tensor, bool]  # (tensor, batched: has the leading candidate dimension)


def share_rows(per_column: Sequence[dict[str, Value]]) -> list[dict[str, Value]]:
    """Return the columns' batched tensors as consecutive row ranges of one tensor per statistic, row shape and dtype.

    The values are unchanged. Columns of one shape are stacked together for every program
    (`emq.evaluate`); when their rows already sit side by side in memory, that stack is a
    view of them (`concat_rows`) instead of a copy made again for each program and block.
    """
    out = [dict(d) for d in per_column]
    runs: dict[tuple, list[tuple[int, str]]] = {}
    for c, d in enumerate(per_column):
        for stat, (t, batched) in d.items():
            if batched:
                runs.setdefault((stat, tuple(t.shape[1:]), t.dtype, t.device), []).append((c, stat))
    for members in runs.values():
        if len(members) < 2:
            continue
        base = torch.cat([per_column[c][stat][0] for c, stat in members])
        start = 0
        for c, stat in members:
            rows = per_column[c][stat][0].shape[0]
            out[c][stat] = (base[start: start + rows], True)
            start += rows
    return out


def concat_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return `torch.cat(parts)` (along rows); a view, not a copy, when the parts are consecutive rows of one
    contiguous tensor (`share_rows`). Bit-identical either way."""
    first = parts[0]
    if len(parts) == 1:
        return first
    row = tuple(first.shape[1:])
    at = first.data_ptr()
    storage = first.untyped_storage().data_ptr()
    for part in parts:
        if (part.numel() == 0 or not part.is_contiguous() or part.dtype != first.dtype
                or tuple(part.shape[1:]) != row or part.untyped_storage().data_ptr() != storage
                or part.data_ptr() != at):
            return torch.cat(list(parts))
        at += part.numel() * part.element_size()
    shape = (sum(part.shape[0] for part in parts), *row)
    return first.as_strided(shape, _contiguous_strides(shape))


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


@dataclass
class Column:
    """One layer (same name, statistics and shapes) of the candidates of a block that have it, stacked."""

    name: str
    members: np.ndarray  # block-local indices of the candidates having this layer, ascending
    stat_names: frozenset[str]
    tensors: dict[str, Value]
    params: torch.Tensor  # [m] float64: the layer's parameter count in each member
    #: K-entry samples of the positional statistics with more than K entries (`emq.sketch`; empty: not sketched)
    sketch: dict[str, Value] = field(default_factory=dict)
    #: Sub-tensors of at most K entries of the same statistics, for the programs a sketch cannot serve (`emq.sketch`)
    slices: dict[str, Value] = field(default_factory=dict)


@dataclass
class Block:
    """Up to `block` consecutive candidates: their layers as columns, and each candidate's layers in order."""

    index: np.ndarray  # positions (in the whole list) of the block's candidates
    columns: list[Column]
    #: per candidate: (column, row in the column) of each of its layers, in the candidate's layer order
    layout: list[list[tuple[int, int]]]
    #: (statistics read, samples read) -> the columns' stacking groups (`emq.evaluate._shape_groups`), kept
    groups: dict = field(default_factory=dict, repr=False, compare=False)


def _dtype_parts(items: Sequence[NetworkStats], layer: str, members: list[int]) -> list[list[int]]:
    """Return the members of a layer's group split by the dtypes of the statistics whose dtype differs among them.

    The statistics cache stores each tensor as float16 or bfloat16, whichever holds it
    better, so one layer's statistic can come in both: stacked together they would be
    widened to float32 (twice the memory). Each dtype combination is a column of its own
    instead; evaluation stacks columns of one shape and dtype again (`emq.evaluate`).
    """
    first = items[members[0]].layers[layer]
    mixed = [stat for stat, t0 in first.items() if any(items[k].layers[layer][stat].dtype != t0.dtype for k in members)]
    if not mixed:
        return [members]
    parts: dict[tuple, list[int]] = {}
    for k in members:
        parts.setdefault(tuple(str(items[k].layers[layer][stat].dtype) for stat in mixed), []).append(k)
    return list(parts.values())


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

    With `sketch` K > 0 each column also holds K-entry samples of its positional
    statistics larger than K, which programs that can read them are scored on
    (`emq.sketch`); the full tensors stay, for the programs that cannot. With `slices` too
    (and K > 0), each column also holds K-entry slices, which programs that cannot read a
    sketch but have no cross-layer op are scored on.
    """

    def __init__(self, stats_list: Sequence[NetworkStats], device: str | torch.device | None = None,
                 chunk_elements: int = CHUNK_ELEMENTS, block: int | None = None, sketch: int = 0,
                 slices: bool = False) -> None:
        self.n = len(stats_list)
        self.chunk_elements = chunk_elements
        self.block = block_for(self.n) if block is None else block
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.sketch = 0
        self.slices = False
        self._views: dict[tuple[int, bool], StackedStats] = {}
        #: Per-layer scalar subprogram values kept across programs (`enable_memo`; None: off), and where in it.
        self.memo: SubprogramMemo | None = None
        self.memo_scope: Hashable = 0
        self.blocks = [self._stack(stats_list[a:a + self.block], np.arange(a, min(self.n, a + self.block)))
                       for a in range(0, self.n, self.block)]
        if sketch:
            self.blocks, self.sketch, self.slices = self._sketched(sketch, slices), sketch, slices

    def enable_memo(self, memo: SubprogramMemo | None = None, scope: Hashable = 0) -> "StackedStats":
        """Keep the per-layer scalar values of the subprograms scored on this stack for later programs (a search's
        shards and probe: `emq.subprogram_memo`), in `memo` (default: a new one) under `scope`: the pieces of one
        shard share one memo, and so one bound, each under its own scope. Sketch views share it. Returns self."""
        self.memo = memo if memo is not None else SubprogramMemo()
        self.memo_scope = scope
        for k, view in self._views.items():
            view.memo, view.memo_scope = self.memo, (scope, "sketch", *k)
        return self

    def with_sketch(self, k: int, slices: bool = False) -> "StackedStats":
        """Return these statistics with K-entry sketches (k = 0: none) and, with `slices`, K-entry slices, sharing
        the full tensors; built once per (k, slices)."""
        key = (k, bool(slices and k))
        if key == (self.sketch, self.slices):
            return self
        if key not in self._views:
            view = self._copy()
            view.blocks, view.sketch, view.slices = self._sketched(*key), *key
            view.memo, view.memo_scope = self.memo, (self.memo_scope, "sketch", *key)
            self._views[key] = view
        return self._views[key]

    def _sketched(self, k: int, slices: bool = False) -> list[Block]:
        out = []
        for blk in self.blocks:
            sketches = share_rows([sketch_tensors(col.name, col.tensors, k) for col in blk.columns])
            sliced = share_rows([slice_tensors(col.name, col.tensors, k) if slices and k else {}
                                 for col in blk.columns])
            out.append(Block(blk.index, [replace(col, sketch=a, slices=b)
                                         for col, a, b in zip(blk.columns, sketches, sliced)], blk.layout))
        return out

    def _copy(self) -> "StackedStats":
        out = StackedStats.__new__(StackedStats)
        out.n, out.chunk_elements, out.block, out.device = self.n, self.chunk_elements, self.block, self.device
        out.sketch, out._views, out.blocks, out.memo, out.memo_scope = self.sketch, {}, self.blocks, None, 0
        out.slices = self.slices
        return out

    def _stack(self, items: Sequence[NetworkStats], index: np.ndarray) -> Block:
        by_key: dict[tuple, list[int]] = {}
        for k, s in enumerate(items):
            for layer, d in s.layers.items():
                by_key.setdefault((layer, tuple(sorted((n, tuple(t.shape)) for n, t in d.items()))), []).append(k)
        columns: list[Column] = []
        where: dict[tuple[str, int], tuple[int, int]] = {}
        for (layer, _), group in by_key.items():
            first = items[group[0]].layers[layer]
            # Equal in every member of the layer's group: kept once (unbatched) in each of its columns.
            once = {stat for stat, t0 in first.items() if len(group) > 1 and all(
                items[k].layers[layer][stat] is t0 or (items[k].layers[layer][stat].dtype == t0.dtype
                                                       and torch.equal(items[k].layers[layer][stat], t0))
                for k in group[1:])}
            for members in _dtype_parts(items, layer, group):
                tensors: dict[str, Value] = {}
                for stat, t0 in items[members[0]].layers[layer].items():
                    if stat in once:
                        tensors[stat] = (first[stat].to(self.device), False)
                        continue
                    column = [items[k].layers[layer][stat] for k in members]
                    dtype = t0.dtype if all(t.dtype == t0.dtype for t in column) else torch.float32
                    tensors[stat] = (torch.stack([t.to(dtype) for t in column]).to(self.device), True)
                params = torch.tensor([float(items[k].params.get(layer, 0)) for k in members], dtype=torch.float64,
                                      device=self.device)
                for row, k in enumerate(members):
                    where[(layer, k)] = (len(columns), row)
                columns.append(Column(layer, np.array(members), frozenset(first), tensors, params))
        for col, tensors in zip(columns, share_rows([col.tensors for col in columns])):
            col.tensors = tensors
        layout = [[where[(layer, k)] for layer in s.layers] for k, s in enumerate(items)]
        return Block(index, columns, layout)

    def subset(self, positions: Sequence[int]) -> "StackedStats":
        """Return the stacked statistics of some candidates (by position), keeping their blocks' stacking."""
        out = self._copy()
        out.n = len(positions)
        out.blocks = []
        new_position = {int(p): k for k, p in enumerate(positions)}
        for blk in self.blocks:
            keep = [k for k, i in enumerate(blk.index) if int(i) in new_position]
            if not keep:
                continue
            local = {k: j for j, k in enumerate(keep)}
            columns: list[Column] = []
            renumber: dict[int, int] = {}
            rows: dict[int, dict[int, int]] = {}
            for c, col in enumerate(blk.columns):
                chosen = [r for r, k in enumerate(col.members) if int(k) in local]
                if not chosen:
                    continue
                sel = torch.tensor(chosen, device=self.device)
                renumber[c] = len(columns)
                rows[c] = {r: j for j, r in enumerate(chosen)}
                columns.append(Column(col.name, np.array([local[int(col.members[r])] for r in chosen]),
                                       col.stat_names,
                                       {s: ((t.index_select(0, sel), True) if b else (t, False))
                                        for s, (t, b) in col.tensors.items()},
                                       col.params.index_select(0, sel),
                                       {s: ((t.index_select(0, sel), True) if b else (t, False))
                                        for s, (t, b) in col.sketch.items()}))
            layout = [[(renumber[c], rows[c][r]) for c, r in blk.layout[k]] for k in keep]
            out.blocks.append(Block(np.array([new_position[int(blk.index[k])] for k in keep]), columns, layout))
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
                   for t, _ in (*col.tensors.values(), *col.sketch.values()))


def column_pieces(column: Column, needed: set[str], chunk_elements: int) -> list[tuple[int, int]]:
    """Return [start, stop) pieces covering a column's members (`piece_bounds` of its full tensors)."""
    return piece_bounds(len(column.members), column.tensors, needed, chunk_elements)


def piece_bounds(m: int, tensors: dict[str, Value], needed: set[str], chunk_elements: int) -> list[tuple[int, int]]:
    """Return [start, stop) pieces covering `m` stacked rows of `tensors` (a column's members, or sketches stacked).

    Pieces are sized so one intermediate holds about `chunk_elements` entries (at
    least two networks): the chain of ops on a piece stays in cache and memory is
    bounded. How a piece is computed depends only on its block, so a shard of whole
    blocks gives the same scores.
    """
    widths = [t[0].numel() for s, (t, b) in tensors.items() if b and s in needed]
    if not widths:
        return [(0, m)]  # nothing per-network in this layer: computed once
    size = max(MIN_BATCH, chunk_elements // max(widths))
    return [(a, min(m, a + size)) for a in range(0, m, size)]
