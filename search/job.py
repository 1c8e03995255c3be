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
                 metric, fitness, strategy, evolution, offspring, budget, hurdle_size, hurdle_quantile,
                 sketch, sketch_slices, separable, hof_size, max_search, max_heldout, seed_proxies (list of files)
    [backend]    name ("serial"|"threading"|"loky"|"dask"|"ray"), scheduler (address), workers, device,
                 shard_memory_mb, screen_in ("workers"|"search")
    [output]     dir

Every field but the four of `OTHER_FIELDS` is a search setting owned by `search.settings`:
the same default, bounds and names as its `emq search` option (a job file without
`max_search` searches 160 networks, as the command does). Relative paths are read from
the job file's folder. See examples/job-*.toml.
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
from emq.errors import DeviceError, EMQUserError
from emq.known import is_known_spec
from search.interrupt import stop_on_signals, stop_requested

EXIT_DONE = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 3
#: Bytes of a job file (it is a few lines; anything larger is not a job file).
MAX_JOB_BYTES = 100_000

#: Fields of a job file beyond the search settings (`search.settings.SETTINGS`, which own the rest).
OTHER_FIELDS = ("benchmark.name", "benchmark.data_dir", "benchmark.batch_source", "output.dir")


def job_fields() -> dict[str, dict[str, str]]:
    """Return section -> field -> setting name (or the field itself for OTHER_FIELDS): what a job file may hold."""
    from search.settings import SETTINGS

    out: dict[str, dict[str, str]] = {}
    for where, name in [*((s.job, s.name) for s in SETTINGS.values() if s.job), *((f, f) for f in OTHER_FIELDS)]:
        section, key = where.split(".")
        out.setdefault(section, {})[key] = name
    return out


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
    #: StatsConfig fields, and SearchRequest fields (search and backend settings), as checked values.
    stats: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "Job":
        """Read and check a TOML job file (a regular file of at most MAX_JOB_BYTES; fields as `from_mapping`)."""
        from emq.safe_read import read_text_limited

        path = Path(path)
        text = read_text_limited(path, MAX_JOB_BYTES, "job file (TOML, see examples/job-*.toml)", JobFileError)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise JobFileError(f"{path}: not valid TOML ({err})") from None
        except RecursionError:
            raise JobFileError(f"{path}: nested too deeply to be a job file (arrays or tables inside one "
                               "another); a job file holds flat fields") from None
        return cls.from_mapping(data, path)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], path: Path) -> "Job":
        """Return the job of parsed TOML `data`: every field checked by its owner in `search.settings`.

        Unknown sections or fields, wrong kinds, values out of their documented bounds and
        devices this machine lacks are JobFileError, naming the file and the field.
        """
        from emq.stats.cache import check_device
        from search.settings import SETTINGS, SettingError, check_value

        known = job_fields()
        values: dict[str, Any] = {}
        for section, fields in data.items():
            if section not in known:
                raise JobFileError(f"{path}: unknown section [{section}]; known: {', '.join(known)}")
            if not isinstance(fields, dict):
                raise JobFileError(f"{path}: [{section}] must be a table of fields")
            for key, value in fields.items():
                if key not in known[section]:
                    raise JobFileError(f"{path}: unknown field {section}.{key}; known: {', '.join(known[section])}")
                name, where = known[section][key], f"{path}: field {section}.{key}"
                try:
                    if name in SETTINGS:
                        values[name] = check_value(SETTINGS[name], value, where)
                        if name in ("device", "pool_device"):
                            check_device(value)
                    elif not isinstance(value, str) or not value:
                        raise JobFileError(f"{where} must be a non-empty string, got {value!r}")
                    else:
                        values[name] = value
                except (SettingError, DeviceError) as err:
                    raise JobFileError(f"{where}: {err}" if isinstance(err, DeviceError) else str(err)) from None
        if "benchmark.name" not in values:
            raise JobFileError(f"{path}: field benchmark.name is missing; e.g. name = \"mq-digits\"")
        if "output.dir" not in values:
            raise JobFileError(f"{path}: field output.dir is missing; e.g. dir = \"runs/job\"")
        base = path.parent
        data_dir = values.pop("benchmark.data_dir", None)
        if "seed_proxies" in values:  # files are relative to the job file; `known:NAME` names the library
            values["seed_proxies"] = tuple(Path(p) if is_known_spec(p) else base / p for p in values["seed_proxies"])
        stats = {k: values.pop(k) for k in STATS_FIELDS if k in values}
        return cls(path=path, benchmark=values.pop("benchmark.name"), out_dir=base / values.pop("output.dir"),
                   data_dir=base / data_dir if data_dir else None, batch_source=values.pop("benchmark.batch_source", None),
                   stats=stats, search=values)


#: Job settings that configure the statistics (`StatsConfig` fields); the others go to the SearchRequest.
STATS_FIELDS = ("batch_size", "init_seed", "hessian_samples", "store_dtype", "stat_names", "device")


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
    from emq.stats.config import StatsConfig
    from search.session import SearchRequest, SearchSettingsError, execute_search, plan_search

    progress = sys.stdout.isatty() if progress is None else progress
    start = time.perf_counter()
    try:
        stats = StatsConfig(**job.stats)
    except (ValueError, TypeError, KeyError) as err:  # KeyError: an unknown statistic name
        raise JobFileError(f"{job.path}: field stats.stats: {err.args[0] if err.args else err}") from None
    request = SearchRequest(job.benchmark, out=job.out_dir, data_dir=job.data_dir, batch_source=job.batch_source,
                            stats=stats, study=True, resume="auto", progress=progress, command=f"emq run {job.path}",
                            read_files=(job.path,), **job.search)
    try:
        plan = plan_search(request)
    except SearchSettingsError as err:
        raise JobFileError(f"{job.path}: {err}") from None
    log = JobLog(job.out_dir / "job.jsonl")
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
