"""Where a worker finds network statistics: files it reads itself, or this process's registry (in-process backends).

A `StatsSource` names a list of statistics without holding it, so it is small enough
to travel with every call to a worker (`search.shard_worker`); `part` cuts it into
the shards of a pool (`search.pool`). Every load is logged, so tests and benchmarks
can check that a worker loads its shard once (`loads_here`).
"""
from __future__ import annotations

import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from emq.stats import NetworkStats
from emq.stats.cache import read_stats, write_stats

#: One lock for this process's registry and its workers' caches (`search.shard_worker`); re-entrant, as
#: a worker loading a registered shard holds it while the source takes it again.
LOCK = threading.RLock()
_REGISTRY: dict[str, list[NetworkStats]] = {}
#: (token, candidates) of every load in this process: what `EvaluationPool.worker_loads` reports.
_LOADS: list[tuple[str, int]] = []


@dataclass(frozen=True)
class StatsSource:
    """Where a worker finds a list of network statistics: files (read by the worker) or this process's registry.

    `token` identifies the content; workers cache the loaded statistics under it.
    A registered source may be a slice (`offset`, `n`) of the list registered as `base`.
    """

    token: str
    paths: tuple[str, ...] = ()
    keys: tuple[str | None, ...] = ()
    n: int = 0
    base: str | None = None
    offset: int = 0

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], keys: Sequence[str | None] | None = None) -> "StatsSource":
        """Return a source over `emq-stats/1` files (e.g. the statistics cache); the token hashes names, sizes and times."""
        paths = tuple(str(Path(p).resolve()) for p in paths)
        h = hashlib.sha256()
        for p in paths:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns};".encode())
        keys = tuple(keys) if keys is not None else (None,) * len(paths)
        return cls(f"files-{h.hexdigest()[:20]}", paths, keys, len(paths))

    @classmethod
    def spill(cls, stats_list: Sequence[NetworkStats], folder: str | Path) -> "StatsSource":
        """Write statistics to `folder` (atomically, one file each) and return a source over them."""
        folder = Path(folder)
        paths = []
        for i, stats in enumerate(stats_list):
            path = folder / f"{i:06d}.pt"
            write_stats(path, f"spill/{i}", str(i), stats)
            paths.append(path)
        return cls.from_files(paths, [f"spill/{i}" for i in range(len(paths))])

    def part(self, start: int, stop: int) -> "StatsSource":
        """Return the source of candidates [start, stop) of this one."""
        if self.paths:
            return StatsSource(f"{self.token}[{start}:{stop}]", self.paths[start:stop], self.keys[start:stop],
                               stop - start)
        return StatsSource(f"{self.token}[{start}:{stop}]", n=stop - start, base=self.base or self.token,
                           offset=self.offset + start)

    def nbytes(self) -> int:
        """Return the bytes of the statistics (file sizes; tensor sizes for a registered source)."""
        if self.paths:
            return sum(os.stat(p).st_size for p in self.paths)
        return sum(t.numel() * t.element_size() for s in self.load() for d in s.layers.values() for t in d.values())

    def load(self) -> list[NetworkStats]:
        """Return the statistics (from this process's registry, else from the files)."""
        _LOADS.append((self.token, self.n))
        if not self.paths:
            with LOCK:
                key = self.base or self.token
                if key not in _REGISTRY:
                    raise KeyError(f"statistics {key} are registered in another process; use a file source")
                return _REGISTRY[key][self.offset: self.offset + self.n]
        out = []
        for path, key in zip(self.paths, self.keys):
            stats = read_stats(path, key)
            if stats is None:
                raise FileNotFoundError(f"statistics file {path} is missing or unreadable on this worker")
            out.append(stats)
        return out


def register_local(stats_list: Sequence[NetworkStats]) -> StatsSource:
    """Register statistics in this process (serial / threading backends) and return their source."""
    token = f"local-{uuid.uuid4().hex}"
    with LOCK:
        _REGISTRY[token] = list(stats_list)
    return StatsSource(token, n=len(stats_list))


def forget_local(source: StatsSource) -> None:
    """Drop a registration of `register_local` (the workers' stacks of it: `search.shard_worker.unregister_local`)."""
    with LOCK:
        _REGISTRY.pop(source.token, None)


def loads_here() -> list[tuple[str, int]]:
    """Return the (token, candidates) loads of this process (a worker's report for tests and benchmarks)."""
    return list(_LOADS)
