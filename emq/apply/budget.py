"""Size budgets of a bit allocation: the cap on sum over layers of bits x weights, and sizes of configurations.

The budget is on the bit-weighted parameter count, sum over layers of
bits x weights: given in megabytes (that sum / 8 / 1e6) or as the average
bit-width per weight (that sum / total weights). Both are turned into one integer
cap on the sum, and every configuration an allocator returns satisfies it exactly.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

from emq.errors import BudgetError

BUDGET_UNITS: tuple[str, ...] = ("mb", "avg-bits")

Bits = tuple[int, ...]  # one width per layer, in the objective's layer order

#: The largest cap (bit-weights) a budget stands for: far above any network, small enough to stay exact.
MAX_CAP = 2 ** 62


@dataclass(frozen=True)
class Budget:
    """A cap on the model size: `value` megabytes ("mb") or average bits per weight ("avg-bits")."""

    value: float
    unit: str = "mb"

    def __post_init__(self) -> None:
        if self.unit not in BUDGET_UNITS:
            raise ValueError(f"budget unit must be one of {', '.join(BUDGET_UNITS)}, got {self.unit!r}")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise BudgetError(f"budget must be a positive number, got {self.value!r}")

    def cap(self, total_params: int) -> int:
        """Return the largest allowed sum of bits x weights (an integer; `within` holds for it)."""
        scale = 8e6 if self.unit == "mb" else float(total_params)
        if self.value * scale >= MAX_CAP:  # e.g. 1e308 MB: no network comes near, and floor(inf) would fail
            return MAX_CAP
        cap = math.floor(self.value * scale)
        while (cap + 1) / scale <= self.value:  # float rounding of value * scale
            cap += 1
        while cap > 0 and cap / scale > self.value:
            cap -= 1
        return cap

    def describe(self) -> str:
        return f"{self.value:g} MB" if self.unit == "mb" else f"{self.value:g} average bits"


def size_bits(bits: Mapping[str, int], params: Mapping[str, int]) -> int:
    """Return sum over layers of bits x weights."""
    return int(sum(int(bits[n]) * int(params[n]) for n in params))


def size_mb(bits: Mapping[str, int], params: Mapping[str, int]) -> float:
    """Return the weights' size in megabytes (10^6 bytes) at `bits`."""
    return size_bits(bits, params) / 8e6


def average_bits(bits: Mapping[str, int], params: Mapping[str, int]) -> float:
    """Return the bit-width averaged over weights."""
    return size_bits(bits, params) / sum(params.values())


def check_budget(budget: Budget, params: Mapping[str, int], choices: Sequence[int]) -> int:
    """Return the integer cap of `budget`, or fail when even the lowest width everywhere exceeds it."""
    total = sum(params.values())
    cap = budget.cap(total)
    low = min(choices)
    if low * total > cap:
        raise BudgetError(
            f"budget {budget.describe()} is below the smallest configuration: every layer at {low} bits is "
            f"{low * total / 8e6:.6g} MB ({low} average bits, {total} weights); raise the budget")
    return cap


def uniform_within(params: Mapping[str, int], choices: Sequence[int], cap: int) -> int | None:
    """Return the largest width that fits the cap when every layer uses it (None if none does)."""
    total = sum(params.values())
    fitting = [b for b in choices if b * total <= cap]
    return max(fitting) if fitting else None


def repair_bits(widths: Bits, params: Sequence[int], choices: Sequence[int], cap: int, rng: random.Random) -> Bits:
    """Return `widths` lowered until sum(bits x params) <= cap: a random layer (weighted by its size) drops one step."""
    widths = list(widths)
    order = sorted(choices)
    size = sum(b * p for b, p in zip(widths, params))
    while size > cap:
        open_ = [i for i, b in enumerate(widths) if b > order[0]]
        i = rng.choices(open_, weights=[params[j] for j in open_])[0]
        lower = order[order.index(widths[i]) - 1]
        size -= (widths[i] - lower) * params[i]
        widths[i] = lower
    return tuple(widths)
