"""Imports every op module so that their decorators register the ops."""
from primitives import (  # noqa: F401
    aggregations, binary, layer_tensors, matrix, positions, ranks, reductions, scalars, unary,
)
