"""The functional-equivalence cache: a program that behaves on the probe like one already scored shares its record.

The simplifier merges programs it can prove equal (one canonical hash); others still
compute the same function (`s_abs(l2(x))` is `l2(x)`). After the probe screen their
fingerprints (`search.screening.probe_fingerprint`) agree, and the search gives the
later one the earlier one's record instead of scoring it on the search split. The
price, as in AutoML-Zero: programs equal on the probe but not on the full split share
one fitness. The run's table (fingerprint -> hash, least recently used first) lives in
`SearchState.fingerprints` and is checkpointed with it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from search.screening import Outcome, probe_fingerprint


class Twins:
    """One generation's lookups in a run's fingerprint table; `of` maps a program's hash to its twin's."""

    def __init__(self, table: "OrderedDict[str, str]", memo: "OrderedDict[str, dict[str, Any]]",
                 enabled: bool) -> None:
        self.table = table
        self.memo = memo
        self.enabled = enabled
        self.of: dict[str, str] = {}  # hash -> hash of a program with the same fingerprint, scored or being scored
        self.sent: dict[str, str] = {}  # fingerprint -> hash of the program scored with it this generation

    def found(self, hash_: str, out: Outcome) -> bool:
        """Return True when a program with `out`'s fingerprint was scored in this run or is being scored now.

        Else the program is noted as the one scored with that fingerprint (it goes to the pool).
        """
        if not self.enabled:
            return False
        key = probe_fingerprint(out)
        known = self.table.get(key)
        if known is not None and known in self.memo:  # a twin evicted from the memo has no record to give
            self.table.move_to_end(key)
            self.of[hash_] = known
            return True
        if key in self.sent:
            self.of[hash_] = self.sent[key]
            return True
        self.sent[key] = hash_
        return False

    def remember(self, size: int) -> None:
        """Add this generation's scored fingerprints to the run's table, keeping at most `size` (least recent go)."""
        for key, hash_ in self.sent.items():
            self.table[key] = hash_
            self.table.move_to_end(key)
        while len(self.table) > size:
            self.table.popitem(last=False)
