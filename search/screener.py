"""Where a search screens its new programs on the probe: its own process, or the workers of a process pool.

With a process pool (loky, dask, ray) the screening batches are spread over the
workers (`search.screen_worker`), a few batches ahead of the search, so every core
screens and scores and the search process only keeps the books. With an in-process
pool (serial, threading) the search screens itself, one batch when its result is
asked for. Both give the same outcomes: the probe is stacked the same way and scored
on one thread.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from emq.proxy import Proxy
from emq.stats import NetworkStats
from search.pool import EvaluationPool, Pending
from search.screen_worker import ProbeSpec, stack_probe
from search.screening import Outcome, ProbeInputs, ScreenLimits, checked_probe_inputs, screen_probe
from search.shard_worker import one_thread, worker_device
from search.stats_source import StatsSource


class _Later:
    """A batch screened in this process when its result is first asked for."""

    def __init__(self, work: Callable[[], list[Outcome]]) -> None:
        self._work = work
        self._done: list[Outcome] | None = None

    def result(self) -> list[Outcome]:
        if self._done is None:
            self._done = self._work()
        return self._done

    def settle(self) -> None:
        """Nothing was sent anywhere: a batch never asked for is never screened."""


class LocalScreener:
    """Screens in the search's own process (in-process pools)."""

    ahead = 1

    def __init__(self, probe: ProbeInputs, limits: ScreenLimits) -> None:
        self.probe = probe
        self.limits = limits

    def submit(self, programs: Sequence[Proxy]) -> _Later:
        def work() -> list[Outcome]:
            with torch.no_grad(), one_thread():
                return [screen_probe(p, self.probe, self.limits) for p in programs]

        return _Later(work)


class WorkerScreener:
    """Screens in the pool's workers, batch after batch in turn; `ahead` batches in flight keep them all busy."""

    def __init__(self, pool: EvaluationPool, spec: ProbeSpec, limits: ScreenLimits) -> None:
        self.pool = pool
        self.spec = spec
        self.limits = limits
        self.ahead = 2 * pool.n_shards
        self._turn = 0

    def submit(self, programs: Sequence[Proxy]) -> Pending:
        worker, self._turn = self._turn, self._turn + 1
        return self.pool.screen(worker, self.spec, list(programs), self.limits)


Screener = LocalScreener | WorkerScreener
#: Where a search may screen: "workers" (a process pool's; an in-process pool's search screens itself), "search".
SCREEN_IN = ("workers", "search")


def screener_for(pool: EvaluationPool, probe_stats: Sequence[NetworkStats], probe_other: Sequence[NetworkStats] | None,
                 n_search: int, limits: ScreenLimits, sketch: int = 0, slices: bool = False,
                 trivial: Mapping[str, np.ndarray] | None = None, features: Mapping[str, np.ndarray] | None = None,
                 sources: tuple[StatsSource | None, StatsSource | None] = (None, None),
                 where: str = "workers") -> Screener:
    """Return the search's screener: in the pool's workers for a process pool (`where` "workers"), else in this
    process.

    `sources` names files holding `probe_stats` and `probe_other` (a process pool
    spills the lists to files where they are None).
    """
    trivial, features = checked_probe_inputs(len(probe_stats), len(probe_other) if probe_other is not None else None,
                                             trivial, features)
    if pool.in_process or where == "search":
        device = worker_device(pool.device)
        probe = ProbeInputs.build(stack_probe(probe_stats, device, sketch, slices),
                                  stack_probe(probe_other, device, sketch, slices) if probe_other is not None else None,
                                  n_search, trivial, features)
        return LocalScreener(probe, limits)
    spec = ProbeSpec(pool.share(probe_stats, sources[0]),
                     pool.share(probe_other, sources[1]) if probe_other is not None else None,
                     n_search, trivial, features, sketch, bool(slices and sketch))
    return WorkerScreener(pool, spec, limits)
