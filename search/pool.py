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
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from emq.errors import EMQUserError
from emq.evaluate import StackedStats, block_for, evaluate_pieces
from emq.population import Expansion
from emq.proxy import Proxy
from emq.stats import NetworkStats
from emq.stats.cache import read_stats, write_stats

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
            with _LOCK:
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


@dataclass(frozen=True)
class Shard:
    """One worker's part of a statistics set and how to hold it (small: sent with every call)."""

    source: StatsSource
    device: str | None = None  # None: a GPU per worker if present, else cpu
    claim_dir: str | None = None  # where workers claim GPU slots (round-robin)
    parent_pid: int | None = None  # local worker processes exit when this process is gone
    max_bytes: int | None = None  # stream the shard in pieces of at most this many bytes instead of keeping it
    block: int = 32  # the evaluator's stacking block of the whole set: shards and pieces are whole blocks


def shard_bounds(n: int, shards: int, block: int | None = None) -> list[tuple[int, int]]:
    """Return at most `shards` contiguous, near-equal, non-empty [start, stop) ranges covering n candidates.

    Cuts fall on multiples of `block` (the evaluator's stacking block), so every
    candidate is stacked with the same neighbours whatever the number of shards:
    scores are bit-identical between backends and worker counts.
    """
    block = block or block_for(n)
    blocks = -(-n // block)
    k = max(1, min(shards, blocks))
    cuts = [min(n, round(i * blocks / k) * block) for i in range(k + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


# ------------------------------------------------------------- worker side
#: Shards a worker keeps stacked (least recently used dropped first): a search set and maybe a scoring set.
MAX_SHARDS = 3
_LOCK = threading.RLock()
_REGISTRY: dict[str, list[NetworkStats]] = {}
_SHARDS: OrderedDict[tuple, list[StackedStats]] = OrderedDict()
_DEVICE: dict[str, str] = {}
#: (token, candidates) of every load in this process: what `EvaluationPool.worker_loads` reports.
_LOADS: list[tuple[str, int]] = []
#: Candidates per stacked piece when a shard is loaded to be kept: the file copies of one piece are the
#: only transient memory above the stacked shard.
LOAD_PIECE = 32


def register_local(stats_list: Sequence[NetworkStats]) -> StatsSource:
    """Register statistics in this process (serial / threading backends) and return their source."""
    token = f"local-{uuid.uuid4().hex}"
    with _LOCK:
        _REGISTRY[token] = list(stats_list)
    return StatsSource(token, n=len(stats_list))


def unregister_local(source: StatsSource) -> None:
    with _LOCK:
        _REGISTRY.pop(source.token, None)
        for key in [k for k in _SHARDS if k[0].startswith(source.token)]:
            del _SHARDS[key]


def worker_device(preferred: str | None = None, claim_dir: str | None = None) -> str:
    """Return this worker's device: `preferred`, else one CUDA device per worker (round-robin), else cpu."""
    if preferred:
        return preferred
    if not torch.cuda.is_available():
        return "cpu"
    key = claim_dir or ""
    with _LOCK:
        if key not in _DEVICE:
            _DEVICE[key] = f"cuda:{_claim_slot(claim_dir) % torch.cuda.device_count()}"
        return _DEVICE[key]


def _claim_slot(claim_dir: str | None) -> int:
    # Each worker process takes the next free slot number (an exclusive file create is atomic),
    # so N workers on one machine spread over the visible GPUs in turn.
    if claim_dir is None:
        return os.getpid()
    os.makedirs(claim_dir, exist_ok=True)
    slot = 0
    while True:
        try:
            fd = os.open(os.path.join(claim_dir, f"slot-{slot}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            return slot
        except FileExistsError:
            slot += 1


def _stack_pieces(source: StatsSource, device: str, piece: int, block: int) -> Iterator[tuple[int, StackedStats]]:
    """Yield (offset, stacked statistics) of consecutive pieces of about `piece` candidates of `source`.

    Pieces are whole stacking blocks (see `shard_bounds`), so they stack exactly as one large set would.
    """
    size = max(block, piece // block * block)
    for a in range(0, source.n, size):
        yield a, StackedStats(source.part(a, min(source.n, a + size)).load(), device, block=block)


def _resident(source: StatsSource, device: str, block: int) -> list[tuple[int, StackedStats]]:
    key = (source.token, device, block)
    with _LOCK:
        if key in _SHARDS:
            _SHARDS.move_to_end(key)
            return _SHARDS[key]
        # Loaded and stacked in pieces, so the transient file copies stay one piece, not a second shard.
        pieces = list(_stack_pieces(source, device, LOAD_PIECE, block))
        _SHARDS[key] = pieces
        while len(_SHARDS) > MAX_SHARDS:
            _SHARDS.popitem(last=False)
        return pieces


def _pieces(shard: Shard, device: str) -> Iterator[tuple[int, StackedStats]]:
    source = shard.source
    if shard.max_bytes is None or source.n == 0:
        yield from _resident(source, device, shard.block)
        return
    per_candidate = max(1, source.nbytes() // source.n)
    if per_candidate * source.n <= shard.max_bytes:
        yield from _resident(source, device, shard.block)
        return
    # Over the bound: read it again on every call, one piece at a time (the previous piece is freed first).
    yield from _stack_pieces(source, device, max(1, shard.max_bytes // per_candidate), shard.block)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restored after).

    The search parallelises over shards, not inside ops: several intra-op threads
    per process oversubscribe the cores (measured: the 32-network probe screen ran
    5x slower with 2 threads on 2 busy cores), and a reduction split over a
    different number of threads may round differently. With one thread everywhere,
    serial, loky, dask and ray give the same float32 scores.
    """
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def evaluate_shard(shard: Shard, programs: Sequence[Proxy]) -> tuple[np.ndarray, list[dict[str, int]]]:
    """Return the scores [program, candidate] of `programs` on the shard's candidates, and each program's failures."""
    watch_parent(shard.parent_pid)
    device = worker_device(shard.device, shard.claim_dir)
    # no_grad is scoped: a global switch would leak into the caller's process (serial, threading)
    with torch.no_grad(), one_thread():
        scores, failures = evaluate_pieces(programs, _pieces(shard, device), shard.source.n)
    return scores, [dict(f) for f in failures]


def loads_here() -> list[tuple[str, int]]:
    """Return the (token, candidates) loads of this process (a worker's report for tests and benchmarks)."""
    return list(_LOADS)


def _init_loky_worker(threads: int) -> None:
    """loky executor initializer: share the cores, and keep the shard (it is not a leak)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    # loky restarts a worker whose memory grew by 300 MB since its first job, taking it for a leak:
    # a resident shard grows it by design, and a restart would reload the shard every call.
    from joblib.externals.loky import process_executor

    process_executor._MAX_MEMORY_LEAK_SIZE = float("inf")


#: Seconds between a worker's checks that the search process still exists.
PARENT_POLL_S = 1.0
_WATCHING: list[int] = []


def watch_parent(parent_pid: int | None) -> None:
    """In a local worker process, start (once) a thread that ends the process when `parent_pid` is gone.

    loky keeps idle workers and does not notice a parent killed with SIGKILL, so
    orphaned workers (each holding a shard of the statistics) would stay alive.
    When the parent dies the worker is re-parented, and its parent pid changes.
    """
    if parent_pid is None or parent_pid == os.getpid() or os.getppid() != parent_pid:
        return  # in-process, or not a direct child (a dask or ray worker): nothing to watch
    with _LOCK:
        if _WATCHING:
            return
        _WATCHING.append(parent_pid)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="emq-parent-watch", daemon=True).start()


class _RayShard:
    """A ray actor holding one shard (its process keeps the stacked statistics between calls)."""

    def evaluate(self, shard: Shard, programs: Sequence[Proxy]) -> tuple[np.ndarray, list[dict[str, int]]]:
        return evaluate_shard(shard, programs)

    def loads(self) -> list[tuple[str, int]]:
        return loads_here()


# ------------------------------------------------------------- parent side
@dataclass(frozen=True)
class ShardedStats:
    """A statistics set attached to a pool: its source and the shard each worker holds (shard i on worker i)."""

    source: StatsSource
    shards: tuple[Shard, ...]

    @property
    def n(self) -> int:
        return self.source.n


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
               source: StatsSource | None = None) -> ShardedStats:
        """Return `stats_list` (or the files of `source`) sharded over the workers; workers load their shard on first use.

        In-process backends register the list (no copy); process backends read
        `source`'s files, or a spill of the list written here.
        """
        if self.in_process and stats_list is not None:
            src = register_local(stats_list)
            self._local.append(src)
        elif source is not None:
            src = source
        elif stats_list is not None:
            self._spills += 1
            src = StatsSource.spill(stats_list, Path(self._tmp.name) / f"spill-{self._spills}")
        else:
            raise ValueError("attach needs statistics or a source")
        block = self.block or block_for(src.n)
        shard = Shard(src, self.device, self.claim_dir, self.parent_pid, self.max_shard_bytes, block)
        return ShardedStats(src, tuple(replace(shard, source=src.part(a, b))
                                       for a, b in shard_bounds(src.n, self.n_shards, block)))

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
        if self.backend == "threading":
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.n_jobs, thread_name_prefix="emq-shard")
            return self._threads.submit(evaluate_shard, shard, programs)
        if self.backend == "loky":
            return self._executor(i).submit(evaluate_shard, shard, programs)
        if self.backend == "dask":
            # Pinned: the shard stays cached in that worker's process, so it is loaded once.
            return self._client.submit(evaluate_shard, shard, programs, workers=[self._workers[i]],
                                       allow_other_workers=False, pure=False)
        return self._actor(i).evaluate.remote(shard, programs)

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
            self._workers.append(ProcessPoolExecutor(max_workers=1, initializer=_init_loky_worker, initargs=(threads,)))
        return self._workers[i]

    def _actor(self, i: int) -> Any:
        import ray

        while len(self._workers) <= i:
            self._workers.append(ray.remote(num_cpus=1)(_RayShard).remote())
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
