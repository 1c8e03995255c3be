"""Fill the statistics cache in parallel processes before a serial pass reads it (`fill_cache`).

`load_or_compute` computes missing files one network at a time in the calling process; a
6,000-cell NB201 split then keeps one core of a CPU machine busy for an hour while the
others idle. `fill_cache` computes the missing files first in `workers` local processes
(joblib's loky), each writing its own files atomically, so the serial pass only reads.
On a GPU the serial pass is fast and several processes would share one device: nothing
is done there.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from joblib import Parallel, delayed
from tqdm.auto import tqdm

from emq.bench.base import Benchmark, Candidate
from emq.paths import cache_dir
from emq.stats.cache import cache_folder, candidate_file, iter_stats
from emq.stats.config import StatsConfig

#: Serial seconds (estimated from the first missing file) below which starting processes is not worth it.
MIN_SERIAL_SECONDS = 30.0
#: Networks a worker computes per task (its progress is reported per task).
TASK_SIZE = 25


def missing_candidates(bench: Benchmark, candidates: Sequence[Candidate], config: StatsConfig,
                       cache_root: str | Path | None = None) -> list[Candidate]:
    """Return the candidates without a statistics file for `config` (existence only: damaged files are the serial
    pass's to recompute)."""
    folder = cache_folder(bench, config, cache_root)
    return [c for c in candidates if not candidate_file(folder, c).exists()]


def fill_cache(bench: Benchmark, candidates: Sequence[Candidate], config: StatsConfig, workers: int,
               cache_root: str | Path | None = None, progress: bool = True) -> int:
    """Compute the missing statistics files of `candidates` in `workers` processes (CPU only); return how many.

    Returns 0 without starting anything when `workers` < 2, the device is not the CPU, or
    the missing files would take less than `MIN_SERIAL_SECONDS` serially (estimated from
    the first one, computed here): starting processes costs seconds.
    """
    if workers < 2 or config.resolved_device() != "cpu":
        return 0
    todo = missing_candidates(bench, candidates, config, cache_root)
    if len(todo) < 2 * workers:
        return 0
    start = time.perf_counter()
    for _ in iter_stats(bench, todo[:1], config, progress=False, cache_root=cache_root):  # the first, here: its time
        pass
    todo = todo[1:]
    if (time.perf_counter() - start) * len(todo) < MIN_SERIAL_SECONDS:
        return 0
    root = Path(cache_root) if cache_root is not None else cache_dir()  # the workers' environment may differ
    tasks = [todo[i:i + TASK_SIZE] for i in range(0, len(todo), TASK_SIZE)]
    bar = tqdm(total=len(todo), desc=f"stats {bench.name} ({workers} processes)", unit="net", disable=not progress,
               leave=False)
    results = Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")(
        delayed(_fill_task)(bench, task, config, root) for task in tasks)
    for done in results:
        bar.update(done)
    bar.close()
    return len(todo)


def _fill_task(bench: Benchmark, candidates: Sequence[Candidate], config: StatsConfig,
               cache_root: str | Path | None) -> int:
    """Compute (and write) one task's statistics in a worker process (one torch thread, as everywhere: see
    `emq.stats.cache`); return how many networks it covered."""
    for _ in iter_stats(bench, candidates, config, progress=False, cache_root=cache_root):
        pass
    return len(candidates)
