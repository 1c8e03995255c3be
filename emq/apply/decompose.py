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

import networkx as nx
import numpy as np
import torch

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
    """score = sign * outer(sum_a coef[a] * aggregation_a); `outer` is "identity", "n_log" or "n_sqrt"."""

    coefs: dict[int, float]
    outer: str
    sign: float


def layer_sum(proxy: Proxy) -> LayerSum | None:
    """Return the separable structure of `proxy`, or None when its score is not of that form."""
    return _analyse(proxy, proxy.output, 1.0)


def _analyse(proxy: Proxy, nid: int, sign: float) -> LayerSum | None:
    form = _linear(proxy, nid)
    if form is not None:
        return LayerSum(form, "identity", sign)
    op = proxy.graph.nodes[nid].get("op")
    args = proxy.graph.nodes[nid].get("args", [])
    if op == "n_neg":
        return _analyse(proxy, args[0], -sign)
    if op in MONOTONE_ABS_OPS:
        inner = _linear(proxy, args[0])
        return LayerSum(inner, op, sign) if inner is not None else None
    return None


def _linear(proxy: Proxy, nid: int) -> dict[int, float] | None:
    attrs = proxy.graph.nodes[nid]
    op = attrs.get("op")
    if op in LINEAR_AGGREGATIONS:
        return {nid: 1.0}
    if op not in LINEAR_NETWORK_OPS:
        return None
    parts = [_linear(proxy, a) for a in attrs["args"]]
    if any(p is None for p in parts):
        return None
    scales = {"n_neg": (-1.0,), "n_add": (1.0, 1.0), "n_sub": (1.0, -1.0)}[op]
    out: dict[int, float] = {}
    for part, scale in zip(parts, scales):
        for k, v in part.items():  # type: ignore[union-attr]
            out[k] = out.get(k, 0.0) + scale * v
    return out


def sub_program(proxy: Proxy, node: int) -> Proxy:
    """Return the program that ends at `node` (an aggregation): on one layer's statistics it gives that layer's term."""
    keep = nx.ancestors(proxy.graph, node) | {node}
    return Proxy(proxy.graph.subgraph(keep).copy(), node, {})


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
