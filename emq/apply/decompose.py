"""Recognise proxies whose score is a monotone function of a sum of per-layer terms (exact knapsack via MILP).

A program's per-layer nodes (types T and S) only ever see one layer's statistics,
so every aggregation `sum_layers(t)`, `mean_layers(t)`, `wmean_layers(t)` is a
weighted sum over layers of a term `t(layer)`. A program is *layer-separable* when
its output is

    sign * h(c_1 * agg_1 + c_2 * agg_2 + ...)

built from such aggregations with `n_neg`, `n_add`, `n_sub`, optionally wrapped once
in a monotone `n_log` / `n_sqrt` (h(x) = g(|x|)): maximising it is then maximising a
linear function of the per-layer terms, provided (for `n_log` / `n_sqrt`) the sum
keeps one sign over every configuration. `median_layers`, `max_layers`, `std_layers`,
products of aggregations ... are not separable; they go to the genetic algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from emq.program import Node
from emq.proxy import Proxy
from primitives import get_op

#: Aggregations that are weighted sums over layers.
LINEAR_AGGREGATIONS = ("sum_layers", "mean_layers", "wmean_layers")
#: Network ops that keep a linear combination linear.
LINEAR_NETWORK_OPS = ("n_neg", "n_add", "n_sub")
#: Network ops increasing in |x| (a linear combination of fixed sign stays optimisable).
MONOTONE_ABS_OPS = ("n_log", "n_sqrt")


@dataclass(frozen=True)
class LayerSum:
    """score = sign * outer(sum_a coef[a] * aggregation_a); `outer` is "identity", "n_log" or "n_sqrt".

    `coefs` is keyed by the aggregation subtree (equal aggregations share one coefficient).
    """

    coefs: dict[Node, float]
    outer: str
    sign: float


def layer_sum(proxy: Proxy) -> LayerSum | None:
    """Return the separable structure of `proxy`, or None when its score is not of that form."""
    return _analyse(proxy.root, 1.0)


def _analyse(node: Node, sign: float) -> LayerSum | None:
    form = _linear(node)
    if form is not None:
        return LayerSum(form, "identity", sign)
    if node.name == "n_neg":
        return _analyse(node.children[0], -sign)
    if node.name in MONOTONE_ABS_OPS:
        inner = _linear(node.children[0])
        return LayerSum(inner, node.name, sign) if inner is not None else None
    return None


def _linear(node: Node) -> dict[Node, float] | None:
    if node.name in LINEAR_AGGREGATIONS:
        return {node: 1.0}
    if node.name not in LINEAR_NETWORK_OPS:
        return None
    parts = [_linear(c) for c in node.children]
    if any(p is None for p in parts):
        return None
    scales = {"n_neg": (-1.0,), "n_add": (1.0, 1.0), "n_sub": (1.0, -1.0)}[node.name]
    out: dict[Node, float] = {}
    for part, scale in zip(parts, scales):
        for k, v in part.items():  # type: ignore[union-attr]
            out[k] = out.get(k, 0.0) + scale * v
    return out


def sub_program(node: Node) -> Proxy:
    """Return the program that ends at `node` (an aggregation): on one layer's statistics it gives that layer's term."""
    return Proxy(node)


def layer_weights(op: str, params: np.ndarray) -> np.ndarray:
    """Return the factor each layer's term gets in aggregation `op` (the same rule as the registered op)."""
    n = len(params)
    if op == "sum_layers":
        return np.ones(n)
    if op == "mean_layers":
        return np.full(n, 1.0 / n)
    if op == "wmean_layers":
        w = np.clip(params.astype(np.float64), 0, None)
        if w.sum() <= 0:
            w = np.ones(n)
        return w / w.sum()
    raise ValueError(f"{op} is not a linear aggregation; linear: {', '.join(LINEAR_AGGREGATIONS)}")


def apply_outer(structure: LayerSum, value: float) -> float:
    """Return sign * outer(value), with the registered ops' own numerics."""
    if structure.outer == "identity":
        return structure.sign * value
    fn = get_op(structure.outer).fn
    return structure.sign * float(fn(torch.tensor(value, dtype=torch.float32)))
