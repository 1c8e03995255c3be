"""Unary tensor ops (T -> T): elementwise maps and whole-tensor normalisations.

Every op accepts any shape, 0-d included, and returns a new tensor of the input's
dtype and device; inputs are never modified. Finite input with |x| <= 1e6 gives
finite output in float32 and float64.
"""
from __future__ import annotations

import torch

from primitives.numerics import EPS, safe_div, safe_log
from primitives.registry import register
from primitives.types import Kind

T = Kind.T

# exp(20) ~ 4.9e8: large enough to separate values, small enough to stay finite in
# float32 after later squaring or multiplying by other bounded stats.
EXP_CLAMP = 20.0


@register("abs", (T,), T, "unary", elementwise=True, shape_rule="same", projection=True, sign_blind=True)
def absolute(x: torch.Tensor) -> torch.Tensor:
    """Return |x| elementwise."""
    return x.abs()


@register("square", (T,), T, "unary", elementwise=True, shape_rule="same", sign_blind=True)
def square(x: torch.Tensor) -> torch.Tensor:
    """Return x^2 elementwise."""
    return x * x


@register("cube", (T,), T, "unary", elementwise=True, shape_rule="same")
def cube(x: torch.Tensor) -> torch.Tensor:
    """Return x^3 elementwise (overflows float32 only beyond |x| ~ 7e12)."""
    return x * x * x


@register("sqrt_abs", (T,), T, "unary", elementwise=True, shape_rule="same", sign_blind=True)
def sqrt_abs(x: torch.Tensor) -> torch.Tensor:
    """Return sqrt(|x|) elementwise."""
    return x.abs().sqrt()


@register("log_abs", (T,), T, "unary", elementwise=True, shape_rule="same", sign_blind=True)
def log_abs(x: torch.Tensor) -> torch.Tensor:
    """Return log(|x| + eps) elementwise."""
    return safe_log(x)


@register("exp", (T,), T, "unary", elementwise=True, shape_rule="same")
def exp(x: torch.Tensor) -> torch.Tensor:
    """Return exp(min(x, 20)) elementwise (clamped so the result stays finite)."""
    return x.clamp(max=EXP_CLAMP).exp()


@register("neg", (T,), T, "unary", elementwise=True, shape_rule="same", involution=True)
def neg(x: torch.Tensor) -> torch.Tensor:
    """Return -x elementwise."""
    return -x


@register("reciprocal", (T,), T, "unary", elementwise=True, shape_rule="same")
def reciprocal(x: torch.Tensor) -> torch.Tensor:
    """Return 1 / (x + eps * sign(x)) elementwise, sign(0) = +1 (bounded by 1/eps)."""
    return safe_div(torch.ones_like(x), x)


@register("sigmoid", (T,), T, "unary", elementwise=True, shape_rule="same")
def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Return the logistic sigmoid of x elementwise."""
    return torch.sigmoid(x)


@register("tanh", (T,), T, "unary", elementwise=True, shape_rule="same")
def tanh(x: torch.Tensor) -> torch.Tensor:
    """Return tanh(x) elementwise."""
    return torch.tanh(x)


@register("relu", (T,), T, "unary", elementwise=True, shape_rule="same", projection=True)
def relu(x: torch.Tensor) -> torch.Tensor:
    """Return max(x, 0) elementwise."""
    return torch.relu(x)


@register("sign", (T,), T, "unary", elementwise=True, shape_rule="same", projection=True)
def sign(x: torch.Tensor) -> torch.Tensor:
    """Return the sign of x elementwise (-1, 0 or +1)."""
    return torch.sign(x)


@register("zscore", (T,), T, "unary", shape_rule="same", sketch="sample")
def zscore(x: torch.Tensor) -> torch.Tensor:
    """Return (x - mean) / std over the whole tensor (population std); zeros if x is constant."""
    centered = x - x.mean()
    # Dividing by the largest deviation first keeps the squares away from float32
    # underflow (tiny spreads) and overflow (huge values); the ratio is unchanged.
    scale = centered.abs().amax()
    constant = (x.amax() == x.amin()) | (scale == 0)
    scaled = centered / torch.where(constant, torch.ones_like(scale), scale)
    std = scaled.square().mean().sqrt()
    return torch.where(constant, torch.zeros_like(x), scaled / torch.where(constant, torch.ones_like(std), std))


@register("minmax", (T,), T, "unary", shape_rule="same", sketch="sample")
def minmax(x: torch.Tensor) -> torch.Tensor:
    """Return (x - min) / (max - min) over the whole tensor, in [0, 1]; zeros if x is constant."""
    lo = x.amin()
    span = x.amax() - lo
    varying = span > 0
    return torch.where(varying, (x - lo) / torch.where(varying, span, torch.ones_like(span)), torch.zeros_like(x))


@register("softmax_first", (T,), T, "unary", shape_rule="same")
def softmax_first(x: torch.Tensor) -> torch.Tensor:
    """Return softmax over dim 0 (a 0-d tensor counts as one element, giving 1)."""
    return torch.softmax(x, dim=0)


@register("log_softmax_first", (T,), T, "unary", shape_rule="same")
def log_softmax_first(x: torch.Tensor) -> torch.Tensor:
    """Return log-softmax over dim 0 (a 0-d tensor counts as one element, giving 0)."""
    return torch.log_softmax(x, dim=0)


@register("softmax_last", (T,), T, "unary", shape_rule="same")
def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Return softmax over the last dim (a 0-d tensor counts as one element, giving 1)."""
    return torch.softmax(x, dim=-1)


@register("log_softmax_last", (T,), T, "unary", shape_rule="same")
def log_softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Return log-softmax over the last dim (a 0-d tensor counts as one element, giving 0)."""
    return torch.log_softmax(x, dim=-1)


@register("l2_normalize", (T,), T, "unary", shape_rule="same")
def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Return x / (||x||_F + eps)."""
    return x / (torch.linalg.vector_norm(x) + EPS)


@register("flatten_sort", (T,), T, "unary", projection=True, permutes=True)
def flatten_sort(x: torch.Tensor) -> torch.Tensor:
    """Return the values of x flattened and sorted ascending (1-d; a shape-free view)."""
    return torch.sort(x.reshape(-1)).values


@register("row_norms", (T,), T, "unary")
def row_norms(x: torch.Tensor) -> torch.Tensor:
    """Return the L2 norm of each slice along dim 0 (1-d, length shape[0]; 0-d input gives [|x|])."""
    if x.dim() == 0:
        return x.abs().reshape(1)
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
