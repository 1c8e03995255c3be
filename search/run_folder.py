"""What a search run folder holds: the names of the files EMQ writes there, so no other writer lands on them.

A run folder is written by `emq search` (config, log, checkpoint, hall of fame,
plots, summary), `emq verdict` (verdict.json, the summary's verdict section), a study
or job around it (study.*, job.*) and `emq fit` (its fitted proxy and report). A
command that reads a run folder may add new files beside these, never replace one.
`RunFolder` owns a folder's paths and is the one reader and writer of its config,
hall of fame, per-candidate scores, verdict and summary; `read_run` is how commands
read a finished run (hall of fame + config), every field checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from emq.atomic import write_json_atomic
from emq.fitness import TrivialChoice
from emq.proxy import Proxy
from emq.safe_read import MAX_JSON_BYTES, read_text_limited
from emq.strict_json import loads_strict
from search.config import ENGINE, RunFolderError, SearchConfig

if TYPE_CHECKING:
    from emq.score_table import ScoreTable

#: Files a run (or study) folder may hold, relative to it; present or not yet written.
RUN_FILES: tuple[str, ...] = (
    "config.json", "log.jsonl", "hall_of_fame.json", "summary.md", "evolution.png", "scatter.png", "hall_of_fame.png",
    "verdict.json", ".lock", "checkpoint/state.json", "study.json", "study.md", "job.jsonl", "job-outcome.json",
    "fitted-proxy.json", "fitted-proxy.md", "heldout_scores.csv",
)
#: Per-candidate held-out scores of a finished run (`emq.score_table`): truth, hall of fame, baselines.
HELDOUT_SCORES = "heldout_scores.csv"
CONFIG_FILE = "config.json"
HALL_FILE = "hall_of_fame.json"
SUMMARY_FILE = "summary.md"
VERDICT_FILE = "verdict.json"


@dataclass(frozen=True)
class RunFolder:
    """A search run folder: where its files live, and the one reader and writer of each of them."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def hall_file(self) -> Path:
        return self.path / HALL_FILE

    @property
    def scores_file(self) -> Path:
        return self.path / HELDOUT_SCORES

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def verdict_file(self) -> Path:
        return self.path / VERDICT_FILE

    def write_config(self, config: SearchConfig, stats: Sequence[str], targets: Sequence[str],
                     best_trivial: Mapping[str, TrivialChoice]) -> Path:
        """Write config.json: the search config, statistics, targets and each target's trivial control predictor."""
        return write_json_atomic(self.config_file, {
            "search": config.to_json(), "stats": list(stats), "targets": list(targets),
            "engine": ENGINE, "best_trivial": {t: c.to_json() for t, c in best_trivial.items()}})

    def search_config(self) -> SearchConfig:
        """Return the run's search settings from config.json, checked (`read_run_config`)."""
        return read_run_config(self.path)["search"]

    def write_hall(self, hall: list[dict[str, Any]], config: SearchConfig, command: str | None,
                   meta: Mapping[str, Any] | None = None) -> Path:
        """Write hall_of_fame.json (`search.hall_of_fame` holds its format)."""
        from search.hall_of_fame import write_hall_of_fame

        return write_hall_of_fame(self.path, hall, config, command, meta)

    def replace_hall(self, hall: Mapping[str, Any]) -> Path:
        """Rewrite hall_of_fame.json with `hall` as read and amended (e.g. a second bar added), atomically."""
        from search.hall_of_fame import json_finite

        return write_json_atomic(self.hall_file, json_finite(dict(hall)))

    def read_hall(self) -> dict[str, Any]:
        """Return hall_of_fame.json, checked (format, programs, formulas)."""
        from search.hall_of_fame import load_hall_of_fame

        return load_hall_of_fame(self.path)

    def verdict(self) -> str | None:
        """Return the run's verdict word ("discovery" / "no discovery"), None while the run has none."""
        if not self.hall_file.is_file():
            return None
        return (self.read_hall().get("verdict") or {}).get("verdict")

    def write_scores(self, table: "ScoreTable") -> Path:
        """Write heldout_scores.csv: per-candidate held-out truth and scores, so anyone can recompute the verdict."""
        return table.write(self.scores_file)

    def read_scores(self) -> "ScoreTable":
        """Return heldout_scores.csv, or fail naming the file and what to do."""
        from emq.score_table import ScoreTable

        if not self.scores_file.is_file():
            raise RunFolderError(f"{self.scores_file} not found: runs written before per-candidate scores existed "
                                 "have none; use `emq verdict RUN` without --from-scores (it recomputes the "
                                 "statistics)")
        return ScoreTable.read(self.scores_file)

    def summary_text(self) -> str:
        """Return summary.md ("" before the run wrote one)."""
        return self.summary.read_text(encoding="utf-8") if self.summary.is_file() else ""


def run_folder_files(run_dir: str | Path, except_names: tuple[str, ...] = ()) -> list[Path]:
    """Return every file under `run_dir` plus the `RUN_FILES` it does not hold yet (minus `except_names`).

    Pass it as the inputs of `emq.atomic.check_writes` when a command reads `run_dir`;
    `except_names` are the files that command itself owns there (`emq fit`'s fitted proxy).
    """
    run_dir = Path(run_dir)
    present = [p for p in run_dir.rglob("*") if p.is_file() or p.is_symlink()] if run_dir.is_dir() else []
    reserved = [run_dir / name for name in RUN_FILES]
    skip = {run_dir / name for name in except_names}
    return [p for p in dict.fromkeys(present + reserved) if p not in skip]


@dataclass(frozen=True)
class RunRecord:
    """What `emq verdict` and `emq fit` read from a finished run folder, each field checked."""

    run_dir: Path
    benchmark: str
    config: SearchConfig
    targets: tuple[str, ...]
    stat_names: tuple[str, ...] | None
    n_search: int | None
    n_heldout: int | None
    stats: dict[str, Any]
    programs: list[dict[str, Any]]
    hall: dict[str, Any]

    def program(self, rank: int = 1) -> Proxy:
        """Return the hall of fame's program of `rank` (1 = best), or fail naming how many there are."""
        if not self.programs:
            raise RunFolderError(f"{self.run_dir}: the hall of fame is empty (no program passed screening); "
                                 "there is no program to judge or fit")
        if not 1 <= rank <= len(self.programs):
            raise RunFolderError(f"{self.run_dir}: --rank {rank} but the hall of fame holds {len(self.programs)} "
                                 "program(s)")
        return Proxy.from_json(self.programs[rank - 1]["proxy"], source=f"{self.run_dir}/hall_of_fame.json")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Return a run folder's config.json with `search` as a SearchConfig; fail (RunFolderError) naming the field."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        data = loads_strict(read_text_limited(path, MAX_JSON_BYTES, "run config (config.json)", RunFolderError))
    except ValueError as err:
        if isinstance(err, RunFolderError):
            raise
        raise RunFolderError(f"{path}: not valid JSON ({err}); the file is damaged, rerun or restore it") from None
    if not isinstance(data, dict) or not isinstance(data.get("search"), dict):
        raise RunFolderError(f"{path}: field 'search' (the search settings) is missing; point to a folder "
                             "written by `emq search`")
    try:
        config = SearchConfig.from_json(data["search"])
    except (ValueError, TypeError, KeyError) as err:
        raise RunFolderError(f"{path}: field 'search' is damaged ({err}); rerun or restore it") from None
    for field in ("stats", "targets"):
        value = data.get(field)
        if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise RunFolderError(f"{path}: field {field!r} must be a list of names, got {_short(value)}")
    return {**data, "search": config}


def read_run(run_dir: str | Path) -> RunRecord:
    """Return the checked record of a finished run folder (hall of fame + config), or fail naming file and field."""
    from search.hall_of_fame import load_hall_of_fame

    run_dir = Path(run_dir)
    hall = load_hall_of_fame(run_dir)
    where = run_dir / "hall_of_fame.json"
    name = hall.get("benchmark")
    if not isinstance(name, str) or not name:
        raise RunFolderError(f"{where}: field 'benchmark' is missing; the run predates held-out scoring or the file "
                             "is damaged: rerun the search")
    split = hall.get("split", {})
    if not isinstance(split, dict):
        raise RunFolderError(f"{where}: field 'split' must be an object (search, heldout, seed), got {_short(split)}")
    sizes = []
    for key in ("search", "heldout"):
        n = split.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 3):
            raise RunFolderError(f"{where}: field 'split.{key}' must be a count of at least 3, got {_short(n)}")
        sizes.append(n)
    stats = hall.get("stats", {})
    if not isinstance(stats, dict):
        raise RunFolderError(f"{where}: field 'stats' must be an object, got {_short(stats)}")
    config = read_run_config(run_dir)
    search = config["search"]
    targets = tuple(search.targets or config.get("targets") or ())
    return RunRecord(run_dir, name, search, targets, tuple(config.get("stats") or ()) or None, sizes[0], sizes[1],
                     stats, hall["programs"], hall)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
