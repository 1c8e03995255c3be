"""Aggregations over layers (S -> N): one network scalar from the per-layer scalars.

Each function takes `values` (the per-layer S results stacked, 1-d, one entry per
layer) and `layer_params` (the layers' parameter counts, same length) and returns a
0-d tensor. Only `wmean_layers` uses the parameter counts.
"""
from __future__ import annotations

import torch

from primitives.registry import register
from primitives.types import Kind

S, N = Kind.S, Kind.N


@register("mean_layers", (S,), N, "aggregation", shape_rule="layers")
def mean_layers(values: torch.Tensor, layer_params: torch.Tensor) -> torch.Tensor:
    """Return the mean over layers."""
    return values.mean()


@register("sum_layers", (S,), N, "aggregation", shape_rule="layers")
def sum_layers(values: torch.Tensor, layer_params: torch.Tensor) -> torch.Tensor:
    """Return the sum over layers."""
    return values.sum()


@register("median_layers", (S,), N, "aggregation", shape_rule="layers")
def median_layers(values: torch.Tensor, layer_params: torch.Tensor) -> torch.Tensor:
    """Return the median over layers (the mean of the two middle values for an even count)."""
    # torch.median returns the lower middle value; quantile interpolates.
    return torch.quantile(values.reshape(-1), 0.5)


@register("max_layers", (S,), N, "aggregation", shape_rule="layers")
def max_layers(values: torch.Tensor, layer_params: torch.Tensor) -> torch.Tensor:
    """Return the largest per-layer value."""
    return values.amax()


@register("min_layers", (S,), N, "aggregation", shape_rule="layers")
def min_layers(values: torch.Tensor, layer_params: torch.Tensor) -> torch.Tensor:
    """Return the smallest per-layer value."""
    return values.amin()


@register("wmean_layers", (S,), N, "aggregation", shape_rule="layers")
def wmean_layers(values: torch.Tensor, layer_params: torch.Tensor) -> torch.Tensor:
    """Return the mean over layers weighted by parameter count (plain mean if all counts are 0)."""
    weights = layer_params.to(values.dtype).clamp(min=0)
    total = weights.sum()
    weights = torch.where(total > 0, weights, torch.ones_like(weights))
    # Normalising the weights before multiplying keeps value * count from overflowing.
    return (values * (weights / weights.sum())).sum()


@register("std_layers", (S,), N, "aggregation", shape_rule="layers")
def std_layers(values: torch.Tensor, layer_params: torch.Tensor) -> torch.Tensor:
    """Return the population standard deviation over layers (0 for one layer)."""
    return values.reshape(-1).std(correction=0)
