"""Score batches of programs in parallel on cached statistics (joblib: serial, threading, loky, dask, ray).

Programs travel as JSON (or formula) strings and results come back as plain
arrays; statistics never travel with a batch. Each worker process loads them once
(from the statistics files named by a `StatsSource`, or, in-process, from a
registration) and keeps them stacked on its device, keyed by the source's token.
Workers use one GPU each when CUDA is present (round-robin over the visible
devices), the CPU otherwise.

Backends: "serial" (in this process, no joblib), "threading", "loky" (default;
local processes), "dask" (a `distributed` cluster: `scheduler` is its address, or
None for a LocalCluster of `n_jobs` workers; the statistics files must be readable
by every worker, e.g. on a shared filesystem), "ray" (needs `ray`; `ray.init` is
called with `scheduler` as address when given).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from emq.errors import EMQUserError
from emq.proxy import Proxy
from emq.stats import NetworkStats
from emq.stats_cache import read_stats, write_stats
from emq.evaluate import StackedStats, evaluate_stacked
from search.screening import Outcome, ScreenInputs, ScreenLimits, screen_and_score

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
    """Where a worker finds a list of network statistics: files (read once per worker) or this process's registry.

    `token` identifies the content; workers cache the loaded statistics under it.
    """

    token: str
    paths: tuple[str, ...] = ()
    keys: tuple[str | None, ...] = ()
    n: int = 0

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

    def load(self) -> list[NetworkStats]:
        """Return the statistics (from this process's registry, else from the files)."""
        if not self.paths:
            with _LOCK:
                if self.token not in _REGISTRY:
                    raise KeyError(f"statistics {self.token} are registered in another process; use a file source")
                return _REGISTRY[self.token]
        out = []
        for path, key in zip(self.paths, self.keys):
            stats = read_stats(path, key)
            if stats is None:
                raise FileNotFoundError(f"statistics file {path} is missing or unreadable on this worker")
            out.append(stats)
        return out


@dataclass(frozen=True)
class Workload:
    """What the programs of one search are screened and scored against (small; sent with every batch)."""

    search: StatsSource
    probe_other: StatsSource | None
    probe_index: tuple[int, ...]
    limits: ScreenLimits
    device: str | None = None  # None: a GPU per worker if present, else cpu
    claim_dir: str | None = None  # where workers claim GPU slots (round-robin)
    parent_pid: int | None = None  # local worker processes exit when this process is gone
    #: Trivial predictors and arch hyperparameters on the probe networks: (name, values) pairs.
    probe_trivial: tuple[tuple[str, tuple[float, ...]], ...] = ()
    probe_features: tuple[tuple[str, tuple[float, ...]], ...] = ()


# ------------------------------------------------------------- worker side
#: Stacked statistic sets a worker keeps (least recently used dropped first).
MAX_SOURCES = 3
_LOCK = threading.RLock()
_REGISTRY: dict[str, list[NetworkStats]] = {}
_STACKED: OrderedDict[tuple, StackedStats] = OrderedDict()
_PREPARED: dict[tuple, ScreenInputs] = {}
_DEVICE: dict[str, str] = {}


def register_local(stats_list: Sequence[NetworkStats]) -> StatsSource:
    """Register statistics in this process (serial / threading backends) and return their source."""
    token = f"local-{uuid.uuid4().hex}"
    with _LOCK:
        _REGISTRY[token] = list(stats_list)
    return StatsSource(token, n=len(stats_list))


def unregister_local(source: StatsSource) -> None:
    with _LOCK:
        _REGISTRY.pop(source.token, None)
        for key in [k for k in _STACKED if k[0] == source.token]:
            del _STACKED[key]
        for key in [k for k in _PREPARED if source.token in k]:
            del _PREPARED[key]


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


def _stacked(source: StatsSource, device: str) -> StackedStats:
    key = (source.token, device)
    with _LOCK:
        if key in _STACKED:
            _STACKED.move_to_end(key)
            return _STACKED[key]
        stacked = StackedStats(source.load(), device)
        _STACKED[key] = stacked
        # A worker serves one search at a time (search set, probe's second batch, maybe a scoring set):
        # older stacks go, so memory stays bounded.
        while len(_STACKED) > MAX_SOURCES:
            _STACKED.popitem(last=False)
        return stacked


def prepared_inputs(workload: Workload) -> ScreenInputs:
    """Return this worker's screening inputs for `workload`, loading and stacking the statistics once."""
    device = worker_device(workload.device, workload.claim_dir)
    key = (workload.search.token, workload.probe_other.token if workload.probe_other else None,
           workload.probe_index, workload.probe_trivial, workload.probe_features, device)
    with _LOCK:
        if key in _PREPARED:
            return _PREPARED[key]
    search = _stacked(workload.search, device)
    other = _stacked(workload.probe_other, device) if workload.probe_other is not None else None
    inputs = ScreenInputs.build(search, other, workload.probe_index, dict(workload.probe_trivial),
                                dict(workload.probe_features))
    with _LOCK:
        _PREPARED.clear()
        _PREPARED[key] = inputs
    return inputs


def parse_program(text: str) -> Proxy:
    """Return the proxy of a JSON (`emq-proxy/1`) or formula string."""
    text = text.strip()
    if text.startswith("{"):
        return Proxy.from_json(json.loads(text))
    return Proxy.from_formula(text)


def program_text(program: Proxy | str) -> str:
    """Return the string form a program travels in (JSON for a Proxy, formulas unchanged)."""
    return json.dumps(program.to_json()) if isinstance(program, Proxy) else program


#: Seconds between a worker's checks that the search process still exists.
PARENT_POLL_S = 1.0
_WATCHING: list[int] = []


def watch_parent(parent_pid: int | None) -> None:
    """In a local worker process, start (once) a thread that ends the process when `parent_pid` is gone.

    loky keeps idle workers for minutes and does not notice a parent killed with
    SIGKILL, so orphaned workers (each holding a copy of the statistics) would stay
    alive. When the parent dies the worker is re-parented, and its parent pid changes.
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


def _screen_batch(workload: Workload, programs: list[str]) -> list[dict[str, Any]]:
    watch_parent(workload.parent_pid)
    inputs = prepared_inputs(workload)
    with torch.no_grad():  # scoped: a global switch would leak into the caller's process (threading backend)
        return [_outcome_dict(screen_and_score(parse_program(p), inputs, workload.limits)) for p in programs]


def _score_batch(source: StatsSource, device: str | None, claim_dir: str | None, parent_pid: int | None,
                 programs: list[str]) -> list[tuple[np.ndarray, dict]]:
    watch_parent(parent_pid)
    stacked = _stacked(source, worker_device(device, claim_dir))
    out = []
    with torch.no_grad():
        for p in programs:
            scores, failures = evaluate_stacked(parse_program(p), stacked)
            out.append((scores, dict(failures)))
    return out


def _outcome_dict(o: Outcome) -> dict[str, Any]:
    return {"formula": o.formula, "hash": o.hash, "reason": o.reason, "scores": o.scores, "probe": o.probe,
            "seconds": o.seconds, "detail": o.detail}


def _pairs(values: Mapping[str, Sequence[float]] | None) -> tuple[tuple[str, tuple[float, ...]], ...]:
    # Plain, hashable, picklable: the workload travels to every worker with each batch.
    return tuple((str(k), tuple(float(x) for x in v)) for k, v in sorted((values or {}).items()))


# ------------------------------------------------------------- parent side
class EvaluationPool:
    """Parallel scorer of programs; use as a context manager (or call `close`) to release workers and spills."""

    def __init__(self, backend: str = "loky", n_jobs: int | None = None, scheduler: str | None = None,
                 device: str | None = None, batches_per_worker: int = 4, spill_dir: str | Path | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.n_jobs = n_jobs or usable_cores()
        self.scheduler = scheduler
        self.device = device
        self.batches_per_worker = batches_per_worker
        self._tmp = tempfile.TemporaryDirectory(prefix="emq-pool-", dir=spill_dir)
        self.claim_dir = str(Path(self._tmp.name) / "gpu-claims")
        # loky workers are this process's children: they watch it and exit with it (see watch_parent).
        self.parent_pid = os.getpid() if backend == "loky" else None
        self._client = None
        self._cluster = None
        self._local: list[StatsSource] = []
        self._spills = 0
        self._threads = None
        if backend == "threading":
            # n_jobs threads each running torch ops: split the cores between them (restored on close),
            # as joblib does for loky workers, so intra-op threads do not oversubscribe the machine.
            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(1, usable_cores() // self.n_jobs))
        if backend == "dask":
            self._start_dask()
        elif backend == "ray":
            self._start_ray()

    @property
    def in_process(self) -> bool:
        return self.backend in ("serial", "threading")

    # ----------------------------------------------------------- sources
    def attach(self, stats_list: Sequence[NetworkStats], source: StatsSource | None = None) -> StatsSource:
        """Return a source workers can load `stats_list` from (registered in-process, the given files, or a spill)."""
        if self.in_process:
            src = register_local(stats_list)
            self._local.append(src)
            return src
        if source is not None:
            return source
        self._spills += 1
        return StatsSource.spill(stats_list, Path(self._tmp.name) / f"spill-{self._spills}")

    def workload(self, search: Sequence[NetworkStats], probe_other: Sequence[NetworkStats] | None,
                 probe_index: Sequence[int], limits: ScreenLimits, search_source: StatsSource | None = None,
                 other_source: StatsSource | None = None, probe_trivial: Mapping[str, Sequence[float]] | None = None,
                 probe_features: Mapping[str, Sequence[float]] | None = None) -> Workload:
        """Return the workload of one search (attaching its statistics once)."""
        return Workload(
            search=self.attach(search, search_source),
            probe_other=self.attach(probe_other, other_source) if probe_other is not None else None,
            probe_index=tuple(int(i) for i in probe_index), limits=limits, device=self.device,
            claim_dir=self.claim_dir, parent_pid=self.parent_pid, probe_trivial=_pairs(probe_trivial),
            probe_features=_pairs(probe_features),
        )

    def detach(self, workload: Workload) -> None:
        """Forget a workload's in-process statistics (file sources stay with the workers until they exit)."""
        for src in (workload.search, workload.probe_other):
            if src is not None and src in self._local:
                unregister_local(src)
                self._local.remove(src)

    # ------------------------------------------------------------ running
    def screen(self, workload: Workload, programs: Sequence[Proxy | str]) -> list[Outcome]:
        """Return the screening outcome of every program, in order."""
        texts = [program_text(p) for p in programs]
        results = self._map(_screen_batch, (workload,), texts)
        return [Outcome(r["formula"], r["hash"], r["reason"], r["scores"], r["probe"], r["seconds"], r["detail"])
                for r in results]

    def score(self, source: StatsSource, programs: Sequence[Proxy | str]) -> list[tuple[np.ndarray, Counter]]:
        """Return (scores, failures by reason) of every program on the networks of `source`, in order."""
        texts = [program_text(p) for p in programs]
        results = self._map(_score_batch, (source, self.device, self.claim_dir, self.parent_pid), texts)
        return [(s, Counter(f)) for s, f in results]

    def _map(self, fn, args: tuple, texts: list[str]) -> list[Any]:
        """Return `fn(*args, batch)` over batches of `texts`, concatenated in order."""
        if not texts:
            return []
        if self.backend == "serial":
            return fn(*args, texts)
        n_batches = min(len(texts), max(1, self.n_jobs * self.batches_per_worker))
        bounds = np.linspace(0, len(texts), n_batches + 1).astype(int)
        batches = [texts[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        from joblib import Parallel, delayed, parallel_config

        with parallel_config(backend=self.backend, n_jobs=self.n_jobs if self.backend in ("threading", "loky") else -1):
            parts = Parallel()(delayed(fn)(*args, batch) for batch in batches)
        return [r for part in parts for r in part]

    # ------------------------------------------------------------ backends
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

    def _start_ray(self) -> None:
        try:
            import ray
            from ray.util.joblib import register_ray
        except ImportError:
            raise BackendUnavailableError("the ray backend needs the 'ray' package: pip install 'ray[default]'") from None
        if not ray.is_initialized():
            ray.init(address=self.scheduler) if self.scheduler else ray.init(num_cpus=self.n_jobs)
        register_ray()

    def close(self) -> None:
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None
        for src in self._local:
            unregister_local(src)
        self._local.clear()
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
        return {"backend": self.backend, "n_jobs": self.n_jobs, "scheduler": self.scheduler, "device": self.device}
