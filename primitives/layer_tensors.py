"""Cross-layer tensor ops (T -> T): combine a network's per-layer tensors before any reduction.

Every other op sees one layer at a time; these see all the layers a program runs over
(the entries carrying every statistic it reads) and give each of those layers the same
network-wide tensor. So `mean_layers(logdet(sum_layers_t(act_codes_kernel)))` is NASWOT:
the ReLU entries' Hamming kernels summed, then one log-determinant (the mean over layers
of a value equal in every layer is that value).

`fn` receives the list of the layers' tensors of one network, in the network's layer
order, and returns one tensor. Shapes that do not fit together are refused with
`LayerShapeError` (the evaluator counts the candidate as `op_error:<op>`): `sum_layers_t`
and `mean_layers_t` need one shape in every layer, `concat_layers_t` one row width.
Inputs are never modified.
"""
from __future__ import annotations

from typing import Sequence

import torch

from primitives.matrix import as_rows
from primitives.registry import register
from primitives.types import Kind

T = Kind.T


class LayerShapeError(ValueError):
    """Per-layer tensors whose shapes a cross-layer op cannot combine."""


def _same_shape(tensors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    if not tensors:
        raise LayerShapeError(f"{name} needs at least one layer")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise LayerShapeError(f"{name} needs one shape in every layer, got {sorted(shapes)}")
    return torch.stack(list(tensors))


@register("sum_layers_t", (T,), T, "across_layers", shape_rule="across")
def sum_layers_t(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return the sum over the network's layers of their tensors (one shape in every layer), in every layer."""
    return _same_shape(tensors, "sum_layers_t").sum(dim=0)


@register("mean_layers_t", (T,), T, "across_layers", shape_rule="across")
def mean_layers_t(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return the mean over the network's layers of their tensors (one shape in every layer), in every layer."""
    return _same_shape(tensors, "mean_layers_t").mean(dim=0)


@register("concat_layers_t", (T,), T, "across_layers", shape_rule="across")
def concat_layers_t(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return the rows of every layer's tensor (rows along dim 0; one row width) stacked, in every layer."""
    if not tensors:
        raise LayerShapeError("concat_layers_t needs at least one layer")
    rows = [as_rows(t) for t in tensors]
    widths = {r.shape[1] for r in rows}
    if len(widths) > 1:
        raise LayerShapeError(f"concat_layers_t needs one row width in every layer, got {sorted(widths)}")
    return torch.cat(rows, dim=0)
