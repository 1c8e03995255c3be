"""Sketched statistics: a fixed random sample of K entries stands in for a large per-layer tensor (`--sketch K`).

A search scores thousands of programs, and a program that maps `weight` entry by entry
touches every entry of every layer of every candidate (NAS-Bench-201: about 3.3 MB of
statistics per cell). Most programs only map entries one by one and then reduce them,
and a reduction of a uniform sample of the entries estimates the reduction of all of
them. With `--sketch K`, the search split (and the probe) keeps, beside each layer's
full tensors, a sample of K entries of every positional statistic (`StatInfo.positional`:
weight, grad, virtual_grad, act, ...) that has more than K entries.

Where the sample sits (`sketch_positions`) depends only on the layer's name and the
statistic's shape: the same positions are taken in every candidate that has the layer
(so candidates stay comparable), and the statistics of one layer that share a shape
(weight, grad, virtual_grad) share positions, so entry-wise binary ops between them stay
aligned. The positions of a smaller K are a prefix of those of a larger K's permutation.

How a sketch is read (`Op.sketch` of each op, `primitives.registry`):

- entry-wise maps (abs, mul, ...) run on the sample: their output is sampled alike;
- zscore and minmax centre and scale with the sample's moments and extremes;
- mean, mean_abs, l1_per_numel, l2_per_numel (RMS), std, var: computed on the sample
  (estimates of the per-entry averages);
- max, min, max_abs: the sample's extremes (biased toward the middle: a sample's maximum
  is at most the tensor's);
- sum, l1: the sample's value times n / K (n: the full count), so magnitudes stay
  comparable across layers of different sizes (unbiased for a uniform sample);
- l2: times sqrt(n / K) (its square, a sum, scales by n / K);
- logsumexp: plus log(n / K);
- numel: n, exactly (read from the full tensor's shape).

Every sketch has K entries whatever its layer's size, so the evaluator stacks the sketched
layers of a block into one [rows, K] tensor per statistic and runs each op once for them
(`emq.evaluate`): at K = 1024 that, not the entries, is what made sketches fast.

A program is scored on a layer's sketch only when that is sound (`sketch_ratio`): it has
no cross-layer op and no op that reads shapes or positions (softmax, row_norms, matrix
ops: `Op.sketch` ""), and every statistic with more than one entry it reads in that layer
is sketched with the same full shape. Otherwise it is scored on the full tensors, so a
sketch never changes what a program means, only how exactly it is estimated. The hall of
fame is scored again on the full statistics before it is ranked and exported
(`search.engine`); `hall_of_fame.json` keeps both fitness values.

**Slices** (`--sketch-slices`, with `--sketch K`) serve the programs a sketch cannot: those
with an op that reads shapes or positions. They read, instead of each large positional
statistic, a *slice*: the sub-tensor at a fixed random subset of indices along dims 0
and 1 (output and input channels, rows and columns), every later dim kept whole, at most
K entries in all (`slice_counts`; a 1-d statistic keeps K entries; a statistic whose
dims past the second alone hold more than K / 4 entries is read in full). A slice is a
smaller tensor of the same rank, so every per-layer op runs on it, and what it gives is
an estimate with a known bias for ops that read shapes:
- entry-wise maps, then any reduction: as for a sketch (each entry is in the slice with
  probability k / n, so the `total` rules stay unbiased);
- softmax_last, log_softmax_last, sum_positions: exact on the kept rows when the last dims
  are whole (dims past the second always are; on a 2-d statistic the last dim is cut);
- softmax_first, row_norms, l2_normalize, zscore over the slice, flatten_sort: computed
  over the kept entries only (row norms over kept columns; normalisers over kept rows);
  a later `total` rule scales by n / k, which over- or under-states shape-changed
  values;
- corrcoef, gram, matrix ops, count_unique_rows: on the kept rows and columns (a
  principal sub-matrix of the full correlation, for example).
Programs with a cross-layer op (`concat_layers_t`, `mean_layers_t`, `sum_layers_t`)
read the full tensors, whose layers must share a shape. Slices change what a
shape-reading program computes on the search split, not only how exactly, so they are off by
default; the hall of fame is re-scored on the full statistics as with any sketch.
"""
from __future__ import annotations

import functools
import hashlib
import math
from typing import Mapping

import numpy as np
import torch

from emq.program import Node
from emq.stats import STATS
from primitives import Kind, get_op

Value = tuple[torch.Tensor, bool]  # (tensor, batched: has the leading candidate dimension)
#: Salt of the positions' seed: changing it (or the rule below) changes every sketched search.
SALT = "emq-sketch/1"


@functools.lru_cache(maxsize=1024)
def _permutation(layer: str, shape: tuple[int, ...]) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{SALT}|{layer}|{shape}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(math.prod(shape))


@functools.lru_cache(maxsize=4096)
def sketch_positions(layer: str, shape: tuple[int, ...], k: int) -> torch.Tensor:
    """Return the K flat positions (ascending, int64) sampled from a `shape` statistic of layer `layer`.

    Seeded by the layer name and the shape only, so every candidate having the layer, and
    every statistic of that shape in it, is sampled at the same positions.
    """
    return torch.from_numpy(np.sort(_permutation(layer, tuple(shape))[:k]))


def per_candidate_shape(value: Value) -> tuple[int, ...]:
    """Return a stacked value's shape in one candidate (without the leading candidate dimension)."""
    t, batched = value
    return tuple(t.shape[1:]) if batched else tuple(t.shape)


def is_positional(stat: str) -> bool:
    """Whether statistic `stat` may be sketched (`StatInfo.positional`; names outside the catalogue may not)."""
    return stat in STATS and STATS[stat].positional


def sketch_tensors(layer: str, tensors: Mapping[str, Value], k: int) -> dict[str, Value]:
    """Return the sketches ([.., K] samples) of a column's positional statistics having more than K entries."""
    out: dict[str, Value] = {}
    if k <= 0:
        return out
    for stat, (t, batched) in tensors.items():
        shape = per_candidate_shape((t, batched))
        if not is_positional(stat) or math.prod(shape) <= k:
            continue
        index = sketch_positions(layer, shape, k).to(t.device)
        flat = t.reshape(t.shape[0], -1) if batched else t.reshape(-1)
        out[stat] = (flat.index_select(flat.dim() - 1, index).contiguous(), batched)
    return out


#: Salt of the slices' seeds (`slice_indices`): changing it changes every sliced search.
SLICE_SALT = "emq-slices/1"
#: A statistic is sliced only when a slice keeps at least this many (dim 0, dim 1) index pairs.
MIN_SLICE_PAIRS = 4


def slice_counts(shape: tuple[int, ...], k: int) -> tuple[int, ...] | None:
    """Return how many indices a slice keeps along dims 0 (and 1) of a `shape` statistic, None when it is not sliced.

    At most `k` entries in all, dims past the second kept whole; dims 0 and 1 are cut in
    proportion to their sizes. None when the statistic has at most `k` entries, or when
    its dims past the second alone leave fewer than `MIN_SLICE_PAIRS` (dim 0, dim 1) pairs.
    """
    if k <= 0 or math.prod(shape) <= k:
        return None
    if len(shape) == 1:
        return (k,)
    pairs = k // math.prod(shape[2:])
    if pairs < MIN_SLICE_PAIRS:
        return None
    rows = max(1, min(shape[0], round(math.sqrt(pairs * shape[0] / shape[1]))))
    cols = max(1, min(shape[1], pairs // rows))
    return (max(1, min(shape[0], pairs // cols)), cols)


@functools.lru_cache(maxsize=4096)
def slice_indices(layer: str, shape: tuple[int, ...], k: int) -> tuple[torch.Tensor, ...] | None:
    """Return the kept indices (ascending, int64) along dims 0 (and 1) of a `shape` statistic of layer `layer`.

    Seeded by the layer name and the shape only, like `sketch_positions`: every candidate
    having the layer, and every statistic of that shape in it, is sliced alike.
    """
    counts = slice_counts(tuple(shape), k)
    if counts is None:
        return None
    seed = int.from_bytes(hashlib.sha256(f"{SLICE_SALT}|{layer}|{tuple(shape)}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    return tuple(torch.from_numpy(np.sort(rng.permutation(shape[d])[:c])) for d, c in enumerate(counts))


def slice_tensors(layer: str, tensors: Mapping[str, Value], k: int) -> dict[str, Value]:
    """Return the slices (sub-tensors of at most K entries, same rank) of a column's large positional statistics."""
    out: dict[str, Value] = {}
    for stat, (t, batched) in tensors.items():
        if not is_positional(stat):
            continue
        index = slice_indices(layer, per_candidate_shape((t, batched)), k)
        if index is None:
            continue
        for dim, kept in enumerate(index):
            t = t.index_select(dim + int(batched), kept.to(t.device))
        out[stat] = (t.contiguous(), batched)
    return out


def sliceable(root: Node) -> bool:
    """Whether a program may read slices: it has no cross-layer op (those need every layer's tensor in full)."""
    return not any(get_op(node.name).is_cross_layer for node in root.unique() if not node.is_leaf)


def sketchable(root: Node) -> bool:
    """Whether a program may read sketches: no cross-layer op, and every per-layer op on tensors has a sketch rule."""
    for node in root.unique():
        if node.is_leaf or node.kind == Kind.N:
            continue
        op = get_op(node.name)
        if op.is_cross_layer:
            return False
        if Kind.T in op.inputs and not (op.elementwise or op.sketch):
            return False
    return True


def sketch_ratio(needed: set[str], tensors: Mapping[str, Value], sketches: Mapping[str, Value]) -> float | None:
    """Return n / K when a column's statistics read by a program are replaced by their sketches (or slices: K is
    then the slice's entry count), None for full.

    Every statistic read with more than one entry must be sketched and have the same full
    shape (then binary ops pair the same positions, as on the full tensors, where `align`
    pairs equal shapes entry by entry); None when nothing read is sketched.
    """
    if not sketches:
        return None
    shapes = set()
    for stat in needed:
        shape = per_candidate_shape(tensors[stat])
        if math.prod(shape) <= 1:
            continue  # a count broadcasts over a sample as over the tensor
        if stat not in sketches:
            return None
        shapes.add(shape)
    if len(shapes) != 1:
        return None
    (shape,) = shapes
    k = math.prod(per_candidate_shape(sketches[next(s for s in needed if s in sketches)]))
    return math.prod(shape) / k


def estimate(rule: str, value: torch.Tensor, ratio: float | torch.Tensor) -> torch.Tensor:
    """Return a reduction's estimate on the full tensor from its value on a sample (see the module doc).

    `ratio` is n / K: one number, or one per row of a batched `value`.
    """
    if rule not in ("total", "norm", "log_total", "count"):
        return value
    r = torch.as_tensor(ratio, dtype=torch.float64, device=value.device)
    if rule == "norm":
        r = r.sqrt()
    if rule == "log_total":
        return (value.to(torch.float64) + r.log()).to(value.dtype)
    out = value.to(torch.float64) * r
    # K * n / K is n once rounded (counts are integers)
    return (torch.round(out) if rule == "count" else out).to(value.dtype)
