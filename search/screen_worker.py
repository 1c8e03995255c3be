"""The worker side of screening: hold the probe networks (both batches) and screen the programs sent to it.

A search on a process pool (loky, dask, ray) screens in its workers, not in its own
process, so every core screens and scores (issue 23: the parent's probe screen was 41%
of a 10,000-program NAS-Bench-201 loop while the workers waited). A `ProbeSpec` names
the probe networks' statistics files and carries the small rest (trivial predictors,
features), so it travels with every call; a worker stacks the probe once and keeps it
(`MAX_PROBES` at most), with its subprogram memo. The stack is built exactly as the
parent builds it (same networks, order, block, sketch), and torch runs on one thread,
so an outcome's scores do not depend on where it was screened.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from emq.evaluate import StackedStats
from emq.proxy import Proxy
from search.screening import Outcome, ProbeInputs, ScreenLimits, screen_probe
from search.shard_worker import one_thread, watch_parent, worker_device
from search.stats_source import LOCK, StatsSource


@dataclass(frozen=True)
class ProbeSpec:
    """Where a worker finds the probe networks (files), and what else the probe screens need (small)."""

    source: StatsSource  # the probe networks on the search batch
    other: StatsSource | None  # the same networks on a second batch (None: no input-independence screen)
    n_search: int  # candidates of the search split (the time projection)
    trivial: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    sketch: int = 0
    slices: bool = False
    device: str | None = None
    claim_dir: str | None = None
    parent_pid: int | None = None

    @property
    def key(self) -> tuple:
        return (self.source.token, self.other.token if self.other is not None else None, self.sketch, self.slices)


#: Probes a worker keeps stacked (least recently used dropped first): one per search it serves.
MAX_PROBES = 2
_PROBES: OrderedDict[tuple, ProbeInputs] = OrderedDict()


def stack_probe(stats: Sequence, device: str | torch.device, sketch: int, slices: bool) -> StackedStats:
    """Return probe statistics stacked for screening: one stack with its own subprogram memo (parent and workers)."""
    return StackedStats(list(stats), device, sketch=sketch, slices=slices).enable_memo()


def resident_probe(spec: ProbeSpec) -> ProbeInputs:
    """Return the spec's probe inputs, stacked on this worker's device on first use and kept."""
    device = worker_device(spec.device, spec.claim_dir)
    key = (*spec.key, device)
    with LOCK:
        if key in _PROBES:
            _PROBES.move_to_end(key)
            return _PROBES[key]
        probe = stack_probe(spec.source.load(), device, spec.sketch, spec.slices)
        other = stack_probe(spec.other.load(), device, spec.sketch, spec.slices) if spec.other is not None else None
        inputs = ProbeInputs.build(probe, other, spec.n_search, spec.trivial, spec.features)
        _PROBES[key] = inputs
        while len(_PROBES) > MAX_PROBES:
            _PROBES.popitem(last=False)
        return inputs


def screen_programs(spec: ProbeSpec, programs: Sequence[Proxy], limits: ScreenLimits) -> list[Outcome]:
    """Return the probe-screen outcome of each program (`search.screening.screen_probe`), screened here."""
    watch_parent(spec.parent_pid)
    inputs = resident_probe(spec)
    with torch.no_grad(), one_thread():
        return [screen_probe(p, inputs, limits) for p in programs]
