"""Typed op library for proxy programs: pure torch functions registered by name.

Importing the package registers every op (`primitives.library` imports the op modules).
"""
from primitives.errors import EMQUserError, UnknownNameError
from primitives.registry import OPS, Op, Registry, UnknownOpError, add_op, get_op, list_ops, register
from primitives.types import Kind
from primitives import library  # noqa: E402,F401  (registers the ops)

__all__ = ["EMQUserError", "Kind", "Op", "OPS", "Registry", "UnknownNameError", "UnknownOpError", "add_op", "get_op",
           "list_ops", "register"]
