"""Binary tensor ops (T, T -> T) under one explicit shape rule, `align`."""
from __future__ import annotations

import torch

from primitives.numerics import safe_div
from primitives.registry import register
from primitives.types import Kind

T = Kind.T


def align(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (a, b) made compatible for an elementwise op by the library's shape rule.

    1. Equal shapes: returned unchanged, the op is elementwise.
    2. Either has exactly one element: that one becomes 0-d and broadcasts over the
       other (so the result has the other's shape).
    3. Anything else: both are reduced to their mean (0-d) first.

    Torch's own broadcasting is deliberately never used beyond rule 2: two per-layer
    stats of shapes (3, 1) and (1, 3) are unrelated, not an outer product.
    """
    if a.shape == b.shape:
        return a, b
    if a.numel() == 1 or b.numel() == 1:
        if a.numel() == 1:
            a = a.reshape(())
        if b.numel() == 1:
            b = b.reshape(())
        return a, b
    return a.mean(), b.mean()


@register("add", (T, T), T, "binary", commutative=True, elementwise=True, shape_rule="align")
def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return a + b (shapes aligned by `align`)."""
    a, b = align(a, b)
    return a + b


@register("sub", (T, T), T, "binary", elementwise=True, shape_rule="align", equal_args="cancel")
def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return a - b (shapes aligned by `align`)."""
    a, b = align(a, b)
    return a - b


@register("mul", (T, T), T, "binary", commutative=True, elementwise=True, shape_rule="align", equal_args="square")
def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return a * b (shapes aligned by `align`)."""
    a, b = align(a, b)
    return a * b


@register("div", (T, T), T, "binary", elementwise=True, shape_rule="align", equal_args="cancel")
def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return a / (b + eps * sign(b)), sign(0) = +1 (shapes aligned by `align`)."""
    a, b = align(a, b)
    return safe_div(a, b)


@register("div_nonzero", (T, T), T, "binary", elementwise=True, shape_rule="align")
def div_nonzero(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return a / b where b != 0 and 0 where b == 0, no epsilon (clamped to the dtype's finite range).

    `div` shifts b by the library's epsilon, which rewrites ratios of small quantities:
    ZiCo's mean|g| / std g over two mini-batches is dominated by weights whose std is far
    below 1e-8, and it leaves out the weights whose std is 0. This op keeps the ratio
    exact and drops exact zeros, so a program computes ZiCo as defined. Finite in,
    finite out: the quotient is formed in float64 and clamped to the dtype's largest value.
    """
    a, b = align(a, b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    nonzero = b != 0
    quotient = a.to(torch.float64) / torch.where(nonzero, b, torch.ones_like(b)).to(torch.float64)
    limit = torch.finfo(dtype).max
    return torch.where(nonzero, quotient.clamp(-limit, limit), torch.zeros_like(quotient)).to(dtype)


@register("maximum", (T, T), T, "binary", commutative=True, elementwise=True, shape_rule="align", equal_args="self")
def maximum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return max(a, b) elementwise (shapes aligned by `align`)."""
    a, b = align(a, b)
    return torch.maximum(a, b)


@register("minimum", (T, T), T, "binary", commutative=True, elementwise=True, shape_rule="align", equal_args="self")
def minimum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return min(a, b) elementwise (shapes aligned by `align`)."""
    a, b = align(a, b)
    return torch.minimum(a, b)


@register("abs_diff", (T, T), T, "binary", commutative=True, elementwise=True, shape_rule="align", equal_args="cancel")
def abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return |a - b| (shapes aligned by `align`)."""
    a, b = align(a, b)
    return (a - b).abs()
