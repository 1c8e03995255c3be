"""Subprogram memo: per-layer scalar values of subprograms, kept across the programs a search scores.

Evolution makes a child by changing one part of a parent, so most of a child's
subprograms were scored before, in the parent (AutoML-Zero's observation; in our NB201
runs 30-50% of the per-layer scalar nodes repeat between parents and children). A
memo on a stack of statistics (`StackedStats.enable_memo`) keeps the values of every
per-layer scalar node (kind S: `l1(grad)`, `s_mul(mean(weight), max(grad))`, ...)
computed on it, and a later program containing the same subprogram reads them instead
of computing its subtree again.

An entry is keyed by the subprogram and by exactly where it was computed: the block,
the columns stacked together, the pieces they were cut into, whether sketches were read,
and the dtype. Torch can round an entry differently depending on where it sits in a
tensor, so a value is reused only where recomputing it would have put every row at the
same place: scores with and without the memo, and after a resume (the memo starts empty),
are bit-identical. Values are stored per piece as computed (batched or not), and only
when no candidate of the stack failed, so a hit never hides a failure.

The memo is bounded by `max_elements` stored values (least recently used dropped first).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

import torch

Value = tuple[torch.Tensor, bool]  # (tensor, batched: has the leading candidate dimension)

#: Default bound of a memo (one per resident shard, shared by its pieces): stored values (float32: 4 bytes each).
#: NB201's 1,000 search cells have about 42,000 layer rows, so 2**24 values hold about 400 subprograms' (64 MB).
MAX_ELEMENTS = 2 ** 24


class SubprogramMemo:
    """Per-piece values of per-layer scalar subprograms, keyed by (where computed, subprogram); LRU-bounded."""

    def __init__(self, max_elements: int = MAX_ELEMENTS) -> None:
        self.max_elements = max_elements
        self.elements = 0
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[tuple[Hashable, Hashable], list[Value]] = OrderedDict()

    def get(self, where: Hashable, node: Hashable) -> list[Value] | None:
        """Return the per-piece values of subprogram `node` computed at `where`, or None (counted as a miss)."""
        key = (where, node)
        found = self._store.get(key)
        if found is None:
            self.misses += 1
            return None
        self._store.move_to_end(key)
        self.hits += 1
        return found

    def put(self, where: Hashable, node: Hashable, pieces: list[Value]) -> None:
        """Keep the per-piece values of `node` computed at `where` (dropping the least recently used over the bound)."""
        size = sum(t.numel() for t, _ in pieces)
        if size > self.max_elements:
            return
        key = (where, node)
        old = self._store.pop(key, None)
        if old is not None:
            self.elements -= sum(t.numel() for t, _ in old)
        self._store[key] = [(t.detach(), b) for t, b in pieces]
        self.elements += size
        while self.elements > self.max_elements:
            _, dropped = self._store.popitem(last=False)
            self.elements -= sum(t.numel() for t, _ in dropped)

    def __len__(self) -> int:
        return len(self._store)
