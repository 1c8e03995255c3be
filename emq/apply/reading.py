"""The plain-words reading of an allocation comparison: where each proxy ranks and which methods beat it.

Computed from the rows, never written by hand, so a report cannot claim more than its
table shows. The oracle `reference` row is left out: it is headroom, not a method.
A method *beats* a proxy when its measured test accuracy is strictly higher; the gap
is also given in test images, since one image is the resolution of the measurement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

#: Rows that are not methods (the oracle).
NOT_METHODS: frozenset[str] = frozenset({"reference"})


class Row(Protocol):
    budget: str
    method: str
    test_acc: float


@dataclass(frozen=True)
class Standing:
    """One proxy under one budget: its rank among the methods, and the methods above it and level with it."""

    budget: str
    proxy: str
    test_acc: float
    rank: int
    methods: int
    above: tuple[tuple[str, float], ...]  # (method, test accuracy), best first
    level: tuple[str, ...]


def standings(rows: Sequence[Row], proxies: Sequence[str], budgets: Sequence[str]) -> list[Standing]:
    """Return each proxy's standing under each budget (rank 1 = best; tied methods share a rank)."""
    out = []
    for budget in budgets:
        methods = [r for r in rows if r.budget == budget and r.method not in NOT_METHODS]
        for proxy in proxies:
            mine = next((r for r in methods if r.method == proxy), None)
            if mine is None:
                continue
            others = [r for r in methods if r is not mine]
            above = sorted(((r.method, r.test_acc) for r in others if r.test_acc > mine.test_acc),
                           key=lambda t: -t[1])
            level = tuple(r.method for r in others if r.test_acc == mine.test_acc)
            out.append(Standing(budget, proxy, mine.test_acc, 1 + len(above), len(methods), tuple(above), level))
    return out


def reading(rows: Sequence[Row], proxies: Sequence[str], budgets: Sequence[str], test_images: int) -> list[str]:
    """Return the reading as markdown lines: one sentence per proxy and budget, then a tally per proxy."""
    lines = []
    table = standings(rows, proxies, budgets)
    for s in table:
        head = f"- At {s.budget}, {s.proxy} ({s.test_acc:.4f}) ranks {s.rank} of {s.methods} methods"
        if s.above:
            beaten = [f"{m} ({acc:.4f}, {_images(acc - s.test_acc, test_images)} right)" for m, acc in s.above]
            head += f"; it is below {_join(beaten)}"
        else:
            head += "; no method beats it"
        if s.level:
            head += f"; level with {_join(list(s.level))}"
        lines.append(head + ".")
    for proxy in proxies:
        mine = [s for s in table if s.proxy == proxy]
        if not mine:
            continue
        lost = [s.budget for s in mine if s.above]
        best = [s.budget for s in mine if not s.above]
        tally = (f"- {proxy} is beaten by at least one method at {len(lost)} of {len(mine)} budgets"
                 + (f" ({_join(lost)})" if lost else ""))
        tally += f"; it is best (alone or tied) at {_join(best)}." if best else "; it is best at none."
        lines.append(tally)
    return lines


def _images(gap: float, test_images: int) -> str:
    n = round(gap * test_images)
    return f"{n} more test image{'' if n == 1 else 's'}"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
