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
    """Return n / K when a column's statistics read by a program are replaced by their sketches, None for full.

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
    k = per_candidate_shape(sketches[next(s for s in needed if s in sketches)])[0]
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
