"""Batch jobs: a TOML job file names the benchmark, statistics, search, backend and outputs; `run_job` runs it.

A job runs without a terminal: progress bars only when stdout is one, a JSON-lines
log (`job.jsonl` in the output folder), and exit codes for the scheduler:

- 0: done (every run finished; the folder holds the summaries and the verdict);
- 2: user error (a bad job file or input; one line on stderr names the file and field);
- 3: interrupted but resumable (SIGTERM: the current generation is checkpointed);
  rerunning the same job resumes where it stopped.

Sections and fields (all optional except `benchmark.name` and `output.dir`):

    [benchmark]  name, data_dir, batch_source (benchmarks that offer one: see `emq search --help`)
    [stats]      batch_size, init_seed, dtype ("float16"|"float32"), hessian_samples, device, stats (list)
    [search]     population, generations, seeds (list), batch_seeds (list), targets (list), joint,
                 metric, fitness, hof_size, max_search, max_heldout, seed_proxies (list of files)
    [backend]    name ("serial"|"loky"|"dask"|"ray"), scheduler (address), workers, device
    [output]     dir

Relative paths are read from the job file's folder. See examples/job-*.toml.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from emq.atomic import write_text_atomic
from emq.errors import EMQUserError
from search.interrupt import stop_on_signals, stop_requested

EXIT_DONE = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 3
#: Bytes of a job file (it is a few lines; anything larger is not a job file).
MAX_JOB_BYTES = 100_000

SECTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "benchmark": {"name": str, "data_dir": str, "batch_source": str},
    "stats": {"batch_size": int, "init_seed": int, "dtype": str, "hessian_samples": int, "device": str,
              "stats": list},
    "search": {"population": int, "generations": int, "seeds": list, "batch_seeds": list, "targets": list,
               "joint": str, "metric": str, "fitness": str, "hof_size": int, "max_search": int, "max_heldout": int,
               "seed_proxies": list},
    "backend": {"name": str, "scheduler": str, "workers": int, "device": str},
    "output": {"dir": str},
}


class JobFileError(EMQUserError, ValueError):
    """A job file that cannot be run as written; the message names the file and the field."""


@dataclass(frozen=True)
class Job:
    """A parsed, validated job file."""

    path: Path
    benchmark: str
    out_dir: Path
    data_dir: Path | None = None
    batch_source: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "Job":
        """Read and check a TOML job file (unknown sections or fields and wrong types are refused)."""
        path = Path(path)
        try:
            if path.stat().st_size > MAX_JOB_BYTES:
                raise JobFileError(f"{path}: {path.stat().st_size} bytes; a job file may have at most {MAX_JOB_BYTES}")
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobFileError(f"{path}: no such job file") from None
        except IsADirectoryError:
            raise JobFileError(f"{path}: is a folder; give a TOML job file (see examples/job-*.toml)") from None
        except UnicodeDecodeError:
            raise JobFileError(f"{path}: not UTF-8 text; job files are TOML") from None
        except tomllib.TOMLDecodeError as err:
            raise JobFileError(f"{path}: not valid TOML ({err})") from None
        return cls.from_mapping(data, path)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], path: Path) -> "Job":
        for section, values in data.items():
            if section not in SECTIONS:
                raise JobFileError(f"{path}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise JobFileError(f"{path}: [{section}] must be a table of fields")
            for key, value in values.items():
                if key not in SECTIONS[section]:
                    raise JobFileError(f"{path}: unknown field {section}.{key}; known: "
                                       f"{', '.join(SECTIONS[section])}")
                expected = SECTIONS[section][key]
                if not isinstance(value, expected) or isinstance(value, bool):
                    raise JobFileError(f"{path}: field {section}.{key} must be a {expected.__name__}, got "
                                       f"{type(value).__name__} {value!r}")
        name = data.get("benchmark", {}).get("name")
        out = data.get("output", {}).get("dir")
        if not name:
            raise JobFileError(f"{path}: field benchmark.name is missing; e.g. name = \"mq-digits\"")
        if not out:
            raise JobFileError(f"{path}: field output.dir is missing; e.g. dir = \"runs/job\"")
        base = path.parent
        data_dir = data.get("benchmark", {}).get("data_dir")
        search = dict(data.get("search", {}))
        if "seed_proxies" in search:
            search["seed_proxies"] = [str(base / p) for p in search["seed_proxies"]]
        for key in ("seeds", "batch_seeds"):
            values = search.get(key, [0])
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
                raise JobFileError(f"{path}: field search.{key} must be a non-empty list of integers >= 0")
        return cls(path=path, benchmark=name, out_dir=base / out, data_dir=base / data_dir if data_dir else None,
                   batch_source=data.get("benchmark", {}).get("batch_source"),
                   stats=dict(data.get("stats", {})), search=search, backend=dict(data.get("backend", {})))


@dataclass
class JobOutcome:
    """What a job did: its exit code, status line and output folder."""

    exit_code: int
    status: str
    out_dir: Path
    verdict: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "status": self.status, "out_dir": str(self.out_dir),
                "verdict": self.verdict, "seconds": round(self.seconds, 3)}


class JobLog:
    """The job's JSON-lines log: one object per event, appended and flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, **fields}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")


def run_job(job: Job, progress: bool | None = None) -> JobOutcome:
    """Run every (search seed, batch seed) of `job`, resuming what an earlier run of the same job left.

    SIGTERM stops after the current generation (checkpointed) and gives exit code 3.
    """
    from emq.stats_cache import StatsConfig
    from search.session import SearchRequest, SearchSettingsError, execute_search, plan_search

    progress = sys.stdout.isatty() if progress is None else progress
    start = time.perf_counter()
    log = JobLog(job.out_dir / "job.jsonl")
    s = job.search
    try:
        given = {"batch_size": job.stats.get("batch_size"), "init_seed": job.stats.get("init_seed"),
                 "store_dtype": job.stats.get("dtype"), "hessian_samples": job.stats.get("hessian_samples"),
                 "stat_names": tuple(job.stats["stats"]) if job.stats.get("stats") else None}
        stats = StatsConfig(device=job.stats.get("device"), **{k: v for k, v in given.items() if v is not None})
    except (ValueError, TypeError) as err:
        raise JobFileError(f"{job.path}: {err}") from None
    request = SearchRequest(
        job.benchmark, out=job.out_dir, data_dir=job.data_dir, batch_source=job.batch_source, stats=stats,
        seed_proxies=tuple(Path(p) for p in s.get("seed_proxies", [])), backend=job.backend.get("name", "loky"),
        scheduler=job.backend.get("scheduler"), workers=job.backend.get("workers"),
        pool_device=job.backend.get("device"), study=True, resume=True, progress=progress,
        command=f"emq run {job.path}",
        **{k: tuple(v) if isinstance(v, list) else v for k, v in s.items() if k != "seed_proxies"})
    try:
        plan = plan_search(request)
    except SearchSettingsError as err:
        raise JobFileError(f"{job.path}: {err}") from None
    log.write("start", job=str(job.path), benchmark=job.benchmark, seeds=list(plan.seeds),
              batch_seeds=list(plan.batch_seeds), backend=request.backend, search=plan.search_config.to_json(),
              stats=dataclasses.asdict(plan.stats_config))
    with stop_on_signals():
        outcome = execute_search(plan)
    seconds = time.perf_counter() - start
    if stop_requested() or not outcome.finished:
        log.write("interrupted", runs_done=outcome.finished_runs, planned=outcome.planned_runs,
                  seconds=round(seconds, 3))
        return JobOutcome(EXIT_INTERRUPTED, f"interrupted after {outcome.finished_runs} of {outcome.planned_runs} "
                          "run(s); rerun the same job to resume", job.out_dir, None, seconds)
    log.write("done", verdict=outcome.verdict, runs=outcome.finished_runs, seconds=round(seconds, 3))
    write_text_atomic(job.out_dir / "job-outcome.json", json.dumps({"verdict": outcome.verdict}) + "\n")
    return JobOutcome(EXIT_DONE, f"done: {outcome.verdict}", job.out_dir, outcome.verdict, seconds)
