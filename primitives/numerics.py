"""Numerical guards shared by every op: one epsilon, one safe division, one safe log."""
from __future__ import annotations

import torch

# The single epsilon of the op library; representable (and normal) in float32 and float64.
EPS = 1e-8


def safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return a / (b + EPS * sign(b)) with sign(0) = +1, so the denominator is never 0.

    Shifting away from zero (rather than adding EPS) keeps |denominator| >= EPS for
    negative b too, so the quotient is bounded by |a| / EPS.
    """
    shift = torch.full_like(b, EPS)
    return a / (b + torch.where(b >= 0, shift, -shift))


def safe_log(x: torch.Tensor) -> torch.Tensor:
    """Return log(|x| + EPS): finite for every finite x, zero included."""
    return torch.log(x.abs() + EPS)
