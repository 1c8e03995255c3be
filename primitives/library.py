"""Imports every op module so that their decorators register the ops."""
from primitives import aggregations, binary, layer_tensors, matrix, ranks, reductions, scalars, unary  # noqa: F401
