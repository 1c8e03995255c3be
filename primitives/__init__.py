"""Typed op library for proxy programs: pure torch functions registered by name."""
from primitives.registry import OPS, Op, UnknownOpError, add_op, get_op, list_ops, register
from primitives.types import Kind

__all__ = ["Kind", "Op", "OPS", "UnknownOpError", "add_op", "get_op", "list_ops", "register"]
