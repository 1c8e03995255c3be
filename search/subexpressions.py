"""Common subexpressions of a population: the parts of programs that evolution keeps reusing (a log.jsonl statistic).

Read from each program's graph (`Proxy.to_networkx`: one node per distinct
subexpression, keyed by its canonical text), so `mul(a, b)` and `mul(b, a)` count as
one subexpression. Statistics (the leaves) are left out: every program reads some,
and that they are shared says nothing about what the search has found.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from emq.proxy import Proxy


def common_subexpressions(proxies: Iterable[Proxy]) -> dict[str, Any]:
    """Return `shared_subexpressions` and `top_subexpression` of the programs, the fields of a log row.

    `shared_subexpressions`: how many distinct op subexpressions occur in at least two
    of the programs. `top_subexpression`: the one of them in the most programs,
    `{"formula": canonical text, "programs": how many}` (ties: the longer text, then the
    first in alphabetical order, so the row is the same on every run), or None when no
    subexpression is shared. A program counts once per subexpression however often it uses it.
    """
    counts: Counter[str] = Counter()
    for proxy in proxies:
        counts.update(key for key, kind in proxy.to_networkx().nodes(data="kind") if kind == "op")
    shared = [(key, n) for key, n in counts.items() if n >= 2]
    top = min(shared, key=lambda kv: (-kv[1], -len(kv[0]), kv[0]), default=None)
    return {
        "shared_subexpressions": len(shared),
        "top_subexpression": None if top is None else {"formula": top[0], "programs": top[1]},
    }
