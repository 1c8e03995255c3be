"""One torch intra-op thread per process (`one_thread`): scores and statistics that do not depend on core counts."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restored after).

    EMQ parallelises over processes, not inside ops: several intra-op threads per
    process oversubscribe the cores (measured: the search's 32-network probe screen ran
    5x slower with 2 threads on 2 busy cores), and a reduction split over a different
    number of threads rounds differently. With one thread everywhere, serial, loky, dask
    and ray give the same float32 scores, and a statistics file the same bytes on any
    machine's core count.
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)
