"""What a search run folder holds: the names of the files EMQ writes there, so no other writer lands on them.

A run folder is written by `emq search` (config, log, checkpoint, hall of fame,
plots, summary), `emq verdict` (verdict.json, the summary's verdict section), a study
or job around it (study.*, job.*) and `emq fit` (its fitted proxy and report). A
command that reads a run folder may add new files beside these, never replace one.
"""
from __future__ import annotations

from pathlib import Path

#: Files a run (or study) folder may hold, relative to it; present or not yet written.
RUN_FILES: tuple[str, ...] = (
    "config.json", "log.jsonl", "hall_of_fame.json", "summary.md", "evolution.png", "scatter.png", "verdict.json",
    ".lock", "checkpoint/state.json", "study.json", "study.md", "job.jsonl", "job-outcome.json",
    "fitted-proxy.json", "fitted-proxy.md",
)


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
