"""Position ops (T -> T): per-channel sums of layer outputs, which keep the batch and channel axes.

Layer outputs are stored as the network computed them: a conv's (N, C, H, W), a
transformer layer's (N, tokens, C), a linear layer's (N, F). Fisher (Turner et al. 2020)
sums activation x gradient over the positions of each channel before squaring, which no
whole-tensor reduction can write. Inputs are never modified.
"""
from __future__ import annotations

import torch

from primitives.registry import register
from primitives.types import Kind

T = Kind.T


@register("sum_positions", (T,), T, "positions")
def sum_positions(x: torch.Tensor) -> torch.Tensor:
    """Return the sum over positions: (N, C, H, W) over H and W, (N, T, C) over T, giving (N, C); others unchanged."""
    if x.dim() == 4:
        return x.sum(dim=(2, 3))
    if x.dim() == 3:
        return x.sum(dim=1)
    return x.clone()
