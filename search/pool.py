"""Score programs on candidates sharded over workers: each worker holds one shard of the statistics, programs travel.

The candidates of a statistics set are cut into contiguous shards, one per
worker. A worker loads its shard once (from the statistics files named by a
`StatsSource`, or, in-process, from a registration) and keeps it stacked on its
device; memory per worker is about the set divided by the workers, not a copy of
it. Each call sends the programs (pickled `Proxy` objects, a few kB) to every
worker; each returns the scores of its candidates and the failures counted by
reason, and the parent concatenates them. A candidate's score does not depend on
the shard it sits in (`emq.evaluate`), so every backend and worker count gives the
same float32 scores.

`max_shard_bytes` bounds a worker's memory instead: a shard whose statistics
exceed it is not kept, but streamed from its files in pieces of at most that many
bytes on each call (slower: it is read every call; for sets larger than memory).

Backends: "serial" (one shard, in this process), "threading" (in-process shards,
one thread each), "loky" (default; one single-process executor per shard, so a
shard stays with its process), "dask" (a `distributed` cluster: `scheduler` is its
address, or None for a LocalCluster of `n_jobs` workers; shard i is pinned to
worker i, and the statistics files must be readable by every worker, e.g. on a
shared filesystem), "ray" (needs `ray`; one actor per shard). Workers use one GPU
each when CUDA is present (round-robin over the visible devices), the CPU otherwise.

This module is the parent side (the pool, its backends, the scores joined back);
what a worker does with its shard is `search.shard_worker`, where it finds the
statistics `search.stats_source`. A process pool's workers also screen a search's new
programs on the probe (`screen`, run by `search.screen_worker`; see `search.screener`).
"""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emq.errors import EMQUserError
from emq.evaluate import block_for
from emq.population import Expansion
from emq.proxy import Proxy
from emq.stats import NetworkStats
from search.screen_worker import ProbeSpec, screen_programs
from search.screening import Outcome, ScreenLimits
from search.shard_worker import Shard, evaluate_shard, init_loky_worker, shard_bounds, unregister_local
from search.stats_source import StatsSource, loads_here, register_local

BACKENDS = ("serial", "threading", "loky", "dask", "ray")


def usable_cores() -> int:
    """Return the cores this process may run on (its CPU affinity, e.g. under taskset or a container quota)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS / Windows have no affinity call
        return os.cpu_count() or 1


class BackendUnavailableError(EMQUserError, RuntimeError):
    """The chosen parallel backend cannot be used here: its package is not installed, or its scheduler is unreachable."""


@dataclass(frozen=True)
class ShardedStats:
    """A statistics set attached to a pool: its source and the shard each worker holds (shard i on worker i)."""

    source: StatsSource
    shards: tuple[Shard, ...]

    @property
    def n(self) -> int:
        return self.source.n

    def with_sketch(self, k: int, slices: bool = False) -> "ShardedStats":
        """Return the same attached set scored with K-entry sketches (0: on the full statistics) and, with `slices`,
        K-entry slices (`emq.sketch`).

        The workers keep one stack per set, so this loads nothing again.
        """
        return ShardedStats(self.source, tuple(replace(shard, sketch=k, slices=bool(slices and k))
                                               for shard in self.shards))


class Scoring:
    """Programs being scored on the shards; `result()` waits for every shard and concatenates."""

    def __init__(self, pool: "EvaluationPool", jobs: list[Any], programs: list[Proxy],
                 expansion: Expansion | None = None) -> None:
        self._pool = pool
        self._jobs = jobs
        self.programs = programs
        #: How the requested programs map onto the ones the shards score (rank aggregation: its parts).
        self.expansion = expansion

    def result(self) -> list[tuple[np.ndarray, Counter]]:
        if not self.programs:
            return []
        if self.expansion is not None and not self.expansion.trivial:
            return self.expansion.assemble(self._part_results())
        return self._part_results()

    def _part_results(self) -> list[tuple[np.ndarray, Counter]]:
        if self._pool.backend == "serial":
            parts = [self._pool._result((i, shard, self.programs)) for i, shard in self._jobs]
        else:
            parts = [self._pool._result(job) for job in self._jobs]
        scores = np.concatenate([s for s, _ in parts], axis=1)
        out = []
        for k in range(len(self.programs)):
            failures: Counter = Counter()
            for _, fails in parts:
                failures.update(fails[k])
            out.append((scores[k], failures))
        return out


class RayShard:
    """A ray actor holding one shard and the probe (its process keeps the stacked statistics between calls)."""

    def evaluate(self, shard: Shard, programs: Sequence[Proxy]) -> tuple[np.ndarray, list[dict[str, int]]]:
        return evaluate_shard(shard, programs)

    def screen(self, spec: ProbeSpec, programs: Sequence[Proxy], limits: ScreenLimits) -> list[Outcome]:
        return screen_programs(spec, programs, limits)

    def loads(self) -> list[tuple[str, int]]:
        return loads_here()


class Pending:
    """Work sent to one worker; `result()` waits for it."""

    def __init__(self, pool: "EvaluationPool", future: Any) -> None:
        self._pool = pool
        self._future = future

    def result(self) -> list[Outcome]:
        return self._pool._result(self._future)

    def settle(self) -> None:
        """Wait for the worker to finish it (before the pool may close)."""
        self.result()


class EvaluationPool:
    """Scorer of programs on candidates sharded over workers; use as a context manager (or call `close`).

    Shards are whole stacking blocks of `block` candidates (default: `emq.evaluate.block_for`
    of the set's size), so a candidate's score is bit-identical whatever the backend and
    number of workers.
    """

    def __init__(self, backend: str = "loky", n_jobs: int | None = None, scheduler: str | None = None,
                 device: str | None = None, spill_dir: str | Path | None = None,
                 max_shard_bytes: int | None = None, block: int | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if max_shard_bytes is not None and max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.backend = backend
        self.n_jobs = 1 if backend == "serial" else (n_jobs or usable_cores())
        self.scheduler = scheduler
        self.device = device
        self.max_shard_bytes = max_shard_bytes
        self.block = block
        self._tmp = tempfile.TemporaryDirectory(prefix="emq-pool-", dir=spill_dir)
        self.claim_dir = str(Path(self._tmp.name) / "gpu-claims")
        # loky workers are this process's children: they watch it and exit with it (see watch_parent).
        self.parent_pid = os.getpid() if backend == "loky" else None
        self._client = None
        self._cluster = None
        self._workers: list[Any] = []  # per shard index: a loky executor, a dask worker address or a ray actor
        self._threads: ThreadPoolExecutor | None = None
        self._attached: dict[str, ShardedStats] = {}
        self._local: list[StatsSource] = []
        self._spills = 0
        self._torch_threads = None
        if backend == "threading":
            # The shard threads run torch ops side by side: one intra-op thread for the process (restored on
            # close), set here once because the setting is process-wide (see one_thread).
            self._torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        if backend == "dask":
            self._start_dask()
        elif backend == "ray":
            self._start_ray()

    @property
    def in_process(self) -> bool:
        return self.backend in ("serial", "threading")

    @property
    def n_shards(self) -> int:
        return len(self._workers) if self.backend == "dask" else self.n_jobs

    # ----------------------------------------------------------- sources
    def attach(self, stats_list: Sequence[NetworkStats] | None = None,
               source: StatsSource | None = None, sketch: int = 0, slices: bool = False) -> ShardedStats:
        """Return `stats_list` (or the files of `source`) sharded over the workers; workers load their shard on first use.

        In-process backends register the list (no copy); process backends read
        `source`'s files, or a spill of the list written here. `sketch` K > 0: programs
        that can are scored on K-entry sketches of the large statistics (`emq.sketch`), and
        with `slices` the others without a cross-layer op on K-entry slices of them.
        """
        if self.in_process and stats_list is not None:
            src = register_local(stats_list)
            self._local.append(src)
        else:
            src = self.share(stats_list, source)
        block = self.block or block_for(src.n)
        shard = Shard(src, self.device, self.claim_dir, self.parent_pid, self.max_shard_bytes, block, sketch,
                      bool(slices and sketch))
        return ShardedStats(src, tuple(replace(shard, source=src.part(a, b))
                                       for a, b in shard_bounds(src.n, self.n_shards, block)))

    def share(self, stats_list: Sequence[NetworkStats] | None, source: StatsSource | None = None) -> StatsSource:
        """Return a source of files any worker can load: `source`, else a spill of `stats_list` written here."""
        if source is not None:
            return source
        if stats_list is None:
            raise ValueError("attach needs statistics or a source")
        self._spills += 1
        return StatsSource.spill(stats_list, Path(self._tmp.name) / f"spill-{self._spills}")

    def detach(self, data: ShardedStats) -> None:
        """Forget an attached set's in-process registration (file shards stay with the workers until they exit)."""
        if data.source in self._local:
            unregister_local(data.source)
            self._local.remove(data.source)
        self._attached.pop(data.source.token, None)

    # ------------------------------------------------------------ running
    def score(self, data: ShardedStats | StatsSource, programs: Sequence[Proxy]) -> list[tuple[np.ndarray, Counter]]:
        """Return (scores, failures by reason) of every program on every candidate of `data`, in order."""
        return self.submit(data, programs).result()

    def submit(self, data: ShardedStats | StatsSource, programs: Sequence[Proxy]) -> "Scoring":
        """Start scoring `programs` on `data` and return at once; `.result()` waits and gives what `score` gives.

        The caller keeps working meanwhile (the search screens the next programs). The
        serial backend scores when `.result()` is called.
        """
        if isinstance(data, StatsSource):
            if data.token not in self._attached:
                self._attached[data.token] = self.attach(source=data)
            data = self._attached[data.token]
        # A program with rank aggregation is scored as its parts on every shard, then joined (emq.population).
        expansion = Expansion.of(list(programs))
        programs = expansion.parts
        if not programs or self.backend == "serial":
            return Scoring(self, [(i, shard) for i, shard in enumerate(data.shards)], programs, expansion)
        return Scoring(self, [self._submit(i, shard, programs) for i, shard in enumerate(data.shards)], programs,
                       expansion)

    def screen(self, worker: int, spec: ProbeSpec, programs: Sequence[Proxy], limits: ScreenLimits) -> "Pending":
        """Start screening `programs` on the probe in worker `worker` (process backends: `search.screen_worker`);
        `.result()` gives their outcomes. The search spreads its screening batches over the workers this way."""
        if self.in_process:
            raise ValueError("in-process backends screen in the search's own process (search.engine)")
        spec = replace(spec, device=self.device, claim_dir=self.claim_dir, parent_pid=self.parent_pid)
        return Pending(self, self._send(worker % self.n_shards, screen_programs, "screen", spec, list(programs),
                                        limits))

    def worker_loads(self) -> list[list[tuple[str, int]]]:
        """Return, per worker, the (token, candidates) of every statistics load it made (tests, benchmarks)."""
        if self.in_process:
            return [loads_here()]
        if self.backend == "loky":
            return [self._executor(i).submit(loads_here).result() for i in range(self.n_shards)]
        if self.backend == "dask":
            return [self._client.submit(loads_here, workers=[addr], allow_other_workers=False, pure=False).result()
                    for addr in self._workers]
        import ray

        return [ray.get(self._actor(i).loads.remote()) for i in range(self.n_shards)]

    def _submit(self, i: int, shard: Shard, programs: list[Proxy]) -> Any:
        return self._send(i, evaluate_shard, "evaluate", shard, programs)

    def _send(self, i: int, fn: Any, actor_method: str, *args: Any) -> Any:
        """Start `fn(*args)` on worker i (a ray actor runs its method `actor_method`); return its future."""
        if self.backend == "threading":
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.n_jobs, thread_name_prefix="emq-shard")
            return self._threads.submit(fn, *args)
        if self.backend == "loky":
            return self._executor(i).submit(fn, *args)
        if self.backend == "dask":
            # Pinned: the shard (and probe) stays cached in that worker's process, so it is loaded once.
            return self._client.submit(fn, *args, workers=[self._workers[i]], allow_other_workers=False, pure=False)
        return getattr(self._actor(i), actor_method).remote(*args)

    def _result(self, future: Any) -> Any:
        if self.backend == "serial":
            return evaluate_shard(future[1], future[2])
        if self.backend == "ray":
            import ray

            return ray.get(future)
        return future.result()

    # ------------------------------------------------------------ backends
    def _executor(self, i: int) -> Any:
        # One single-process executor per shard: a shard never moves to another process.
        from joblib.externals.loky import ProcessPoolExecutor

        while len(self._workers) <= i:
            threads = max(1, usable_cores() // self.n_jobs)
            self._workers.append(ProcessPoolExecutor(max_workers=1, initializer=init_loky_worker, initargs=(threads,)))
        return self._workers[i]

    def _actor(self, i: int) -> Any:
        import ray

        while len(self._workers) <= i:
            self._workers.append(ray.remote(num_cpus=1)(RayShard).remote())
        return self._workers[i]

    def _start_dask(self) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise BackendUnavailableError(
                "the dask backend needs the 'distributed' package: pip install 'emq[dask]' (or 'dask[distributed]')"
            ) from None
        if self.scheduler:
            try:
                self._client = Client(self.scheduler)
            except (OSError, TimeoutError) as err:  # an environment problem, not a bug: one line
                raise BackendUnavailableError(f"--scheduler {self.scheduler}: cannot reach the dask scheduler "
                                              f"({err}); check the address and that the scheduler runs") from None
        else:
            self._cluster = LocalCluster(n_workers=self.n_jobs, threads_per_worker=1, processes=True,
                                         dashboard_address=None)
            self._client = Client(self._cluster)
        if self._cluster is not None:
            self._client.wait_for_workers(self.n_jobs)
        self._workers = sorted(self._client.scheduler_info()["workers"])
        if not self._workers:
            raise BackendUnavailableError(f"the dask scheduler {self.scheduler} has no workers; start some first")

    def _start_ray(self) -> None:
        try:
            import ray
        except ImportError:
            raise BackendUnavailableError("the ray backend needs the 'ray' package: pip install 'ray[default]'") from None
        if not ray.is_initialized():
            ray.init(address=self.scheduler) if self.scheduler else ray.init(num_cpus=self.n_jobs)

    def close(self) -> None:
        for src in self._local:
            unregister_local(src)
        self._local.clear()
        self._attached.clear()
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        if self._torch_threads is not None:
            torch.set_num_threads(self._torch_threads)
            self._torch_threads = None
        if self.backend == "loky":
            for executor in self._workers:
                executor.shutdown(wait=True, kill_workers=True)
        self._workers = []
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        self._tmp.cleanup()

    def __enter__(self) -> "EvaluationPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "n_jobs": self.n_jobs, "scheduler": self.scheduler, "device": self.device,
                "max_shard_bytes": self.max_shard_bytes}
