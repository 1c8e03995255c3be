"""Reductions (T -> S): one per-layer scalar (a 0-d tensor) from a tensor of any shape.

Each says (`sketch`, see `primitives.registry.Op`) how its value on the whole tensor is
estimated from a fixed sample of K of its n entries (searches with `--sketch K`):
averages, spreads and extremes are computed on the sample; sum and l1 scale by n / K;
l2 by sqrt(n / K); logsumexp adds log(n / K); numel is n.
"""
from __future__ import annotations

import torch

from primitives.registry import register
from primitives.types import Kind

T, S = Kind.T, Kind.S


@register("mean", (T,), S, "reduction", shape_rule="reduce", sketch="sample", order_blind=True)
def mean(x: torch.Tensor) -> torch.Tensor:
    """Return the mean of all entries."""
    return x.mean()


@register("sum", (T,), S, "reduction", shape_rule="reduce", sketch="total", order_blind=True)
def total(x: torch.Tensor) -> torch.Tensor:
    """Return the sum of all entries."""
    return x.sum()


@register("l1", (T,), S, "reduction", shape_rule="reduce", sketch="total", sign_blind=True, order_blind=True)
def l1(x: torch.Tensor) -> torch.Tensor:
    """Return the sum of |x|."""
    return x.abs().sum()


@register("l2", (T,), S, "reduction", shape_rule="reduce", sketch="norm", sign_blind=True, order_blind=True)
def l2(x: torch.Tensor) -> torch.Tensor:
    """Return the Frobenius (L2) norm of all entries."""
    return torch.linalg.vector_norm(x)


@register("std", (T,), S, "reduction", shape_rule="reduce", sketch="sample", order_blind=True)
def std(x: torch.Tensor) -> torch.Tensor:
    """Return the population standard deviation of all entries (0 for one entry)."""
    return x.reshape(-1).std(correction=0)


@register("var", (T,), S, "reduction", shape_rule="reduce", sketch="sample", order_blind=True)
def var(x: torch.Tensor) -> torch.Tensor:
    """Return the population variance of all entries (0 for one entry)."""
    return x.reshape(-1).var(correction=0)


@register("max", (T,), S, "reduction", shape_rule="reduce", sketch="sample", order_blind=True)
def maximum(x: torch.Tensor) -> torch.Tensor:
    """Return the largest entry."""
    return x.amax()


@register("min", (T,), S, "reduction", shape_rule="reduce", sketch="sample", order_blind=True)
def minimum(x: torch.Tensor) -> torch.Tensor:
    """Return the smallest entry."""
    return x.amin()


@register("max_abs", (T,), S, "reduction", shape_rule="reduce", sketch="sample", sign_blind=True, order_blind=True)
def max_abs(x: torch.Tensor) -> torch.Tensor:
    """Return the largest |x|."""
    return x.abs().amax()


@register("logsumexp", (T,), S, "reduction", shape_rule="reduce", sketch="log_total", order_blind=True)
def logsumexp(x: torch.Tensor) -> torch.Tensor:
    """Return log(sum(exp(x))) over all entries, computed stably."""
    return torch.logsumexp(x.reshape(-1), dim=0)


@register("mean_abs", (T,), S, "reduction", shape_rule="reduce", sketch="sample", sign_blind=True, order_blind=True)
def mean_abs(x: torch.Tensor) -> torch.Tensor:
    """Return the mean of |x| (equal to l1 / numel)."""
    return x.abs().mean()


@register("numel", (T,), S, "reduction", shape_rule="reduce", sketch="count", sign_blind=True, order_blind=True)
def numel(x: torch.Tensor) -> torch.Tensor:
    """Return the number of entries, as a float."""
    return x.new_tensor(float(x.numel()))


@register("l1_per_numel", (T,), S, "reduction", shape_rule="reduce", sketch="sample", sign_blind=True, order_blind=True)
def l1_per_numel(x: torch.Tensor) -> torch.Tensor:
    """Return l1 / numel (the same value as mean_abs)."""
    return mean_abs(x)


@register("l2_per_numel", (T,), S, "reduction", shape_rule="reduce", sketch="sample", sign_blind=True, order_blind=True)
def l2_per_numel(x: torch.Tensor) -> torch.Tensor:
    """Return l2 / sqrt(numel), the root mean square of the entries."""
    return l2(x) / (float(x.numel()) ** 0.5)
