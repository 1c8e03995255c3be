"""Subprogram memo: per-layer scalar values of subprograms, kept across the programs a search scores.

Evolution makes a child by changing one part of a parent, so many of a child's
subprograms were scored before, in the parent (AutoML-Zero's observation). A memo on a
stack of statistics (`StackedStats.enable_memo`) keeps the values of every per-layer
scalar node (kind S: `l1(grad)`, `s_mul(mean(weight), max(grad))`, ...) computed on it,
and a later program containing the same subprogram reads them instead of computing its
subtree again.

An entry is keyed by the subprogram and by exactly where it was computed: the block,
the columns stacked together, the pieces they were cut into, whether sketches were read,
and the dtype. Torch can round an entry differently depending on where it sits in a
tensor, so a value is reused only where recomputing it would have put every row at the
same place: scores with and without the memo, and after a resume (the memo starts empty),
are bit-identical. Values are stored per piece as computed (batched or not), and only
when no candidate of the stack failed, so a hit never hides a failure.

The values live in one preallocated float64 ring buffer of `max_elements` entries (float32
and float64 values round-trip exactly), oldest entries overwritten first. Thousands of
small long-lived tensors would instead pin the allocator's heap between the large
temporaries of evaluation: measured on NB201, RSS grew by 2.4 GB over 160 programs that
way, for 6 MB of values.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable

import numpy as np
import torch

Value = tuple[torch.Tensor, bool]  # (tensor, batched: has the leading candidate dimension)

#: Default bound of a memo (one per resident shard, shared by its pieces): values kept, 8 bytes each.
#: NB201's 1,000 search cells have about 42,000 layer rows, so 2**24 values hold about 400 subprograms' (128 MB).
MAX_ELEMENTS = 2 ** 24
#: The evaluation dtypes whose values round-trip exactly through float64.
EXACT = (torch.float32, torch.float64)


@dataclass(frozen=True)
class _Entry:
    start: int
    stop: int
    dtype: torch.dtype
    device: torch.device
    pieces: tuple[tuple[tuple[int, ...], bool], ...]  # each piece's shape and whether it is batched


class SubprogramMemo:
    """Per-piece values of per-layer scalar subprograms, keyed by (where computed, subprogram), in a ring buffer."""

    def __init__(self, max_elements: int = MAX_ELEMENTS) -> None:
        self.max_elements = max_elements
        self.hits = 0
        self.misses = 0
        self._buffer: np.ndarray | None = None  # allocated at the first value kept
        self._head = 0
        self._store: OrderedDict[tuple[Hashable, Hashable], _Entry] = OrderedDict()  # oldest first

    @property
    def elements(self) -> int:
        """Return the values held."""
        return sum(e.stop - e.start for e in self._store.values())

    def get(self, where: Hashable, node: Hashable) -> list[Value] | None:
        """Return the per-piece values of subprogram `node` computed at `where`, or None (counted as a miss)."""
        entry = self._store.get((where, node))
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        out: list[Value] = []
        at = entry.start
        for shape, batched in entry.pieces:
            size = int(np.prod(shape, dtype=np.int64))
            value = torch.from_numpy(self._buffer[at:at + size]).to(device=entry.device, dtype=entry.dtype, copy=True)
            out.append((value.reshape(shape), batched))
            at += size
        return out

    def put(self, where: Hashable, node: Hashable, pieces: list[Value]) -> None:
        """Keep the per-piece values of `node` computed at `where` (overwriting the oldest values when full)."""
        dtype = pieces[0][0].dtype if pieces else None
        size = sum(t.numel() for t, _ in pieces)
        if dtype not in EXACT or any(t.dtype != dtype for t, _ in pieces) or not 0 < size <= self.max_elements:
            return
        key = (where, node)
        self._store.pop(key, None)
        if self._buffer is None:
            self._buffer = np.empty(self.max_elements, dtype=np.float64)
        if self._head + size > self.max_elements:
            self._head = 0
        start, stop = self._head, self._head + size
        # Entries are laid out in the order they were kept, so the ones overlapping the new range are the oldest.
        while self._store:
            oldest_key, oldest = next(iter(self._store.items()))
            if oldest.start >= stop or oldest.stop <= start:
                break
            del self._store[oldest_key]
        at = start
        for t, _ in pieces:
            flat = t.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy()
            self._buffer[at:at + flat.size] = flat
            at += flat.size
        layout = tuple((tuple(t.shape), b) for t, b in pieces)
        self._store[key] = _Entry(start, stop, dtype, pieces[0][0].device, layout)
        self._head = stop

    def __len__(self) -> int:
        return len(self._store)
