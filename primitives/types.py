"""The three value types a proxy program computes with."""
from __future__ import annotations

from enum import Enum


class Kind(str, Enum):
    """Type of a value inside a proxy program.

    T: a per-layer tensor (any shape), S: a per-layer scalar (0-d tensor),
    N: one number for the whole network (0-d tensor).
    """

    T = "T"
    S = "S"
    N = "N"
