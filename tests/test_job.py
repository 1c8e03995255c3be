"""Batch jobs: `emq run JOB.toml` end to end, one-line errors for bad job files, SIGTERM -> exit 3 -> resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emq.paths import results_dir
from search.job import EXIT_DONE, EXIT_INTERRUPTED, Job, JobFileError
from conftest import expected_verdict

ROOT = Path(__file__).resolve().parent.parent
needs_mq_digits = pytest.mark.skipif(
    not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
    reason="results/mq-digits is not built (run: emq bench build mq-digits)",
)

TINY = """
[benchmark]
name = "mq-digits"

[stats]
batch_size = 8
device = "cpu"

[search]
population = 8
generations = {generations}
seeds = [0]
batch_seeds = [0]
hof_size = 3
max_search = 24
max_heldout = 24

[backend]
name = "serial"

[output]
dir = "out"
"""


def _job(tmp_path: Path, generations: int = 2) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(TINY.format(generations=generations))
    return path


def _events(out: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (out / "job.jsonl").read_text().splitlines()]


@needs_mq_digits
def test_tiny_job_runs_end_to_end(run, tmp_path):
    result = run("run", str(_job(tmp_path)), "--json")
    assert result.exit_code == EXIT_DONE, result.output
    outcome = json.loads(result.output.strip().splitlines()[-1])
    out = tmp_path / "out"
    study = json.loads((out / "study.json").read_text())
    assert outcome["exit_code"] == 0 and outcome["verdict"] == expected_verdict([r["difference"] for r in study["runs"]])
    assert _events(out) == ["start", "done"]
    assert json.loads((out / "study.json").read_text())["verdict"] == outcome["verdict"]
    assert (out / "seed0-batch0" / "summary.md").exists()


@pytest.mark.parametrize("text, message", [
    ("[benchmark]\nname = 'mq-digits'\n", "output.dir is missing"),
    ("[output]\ndir = 'x'\n", "benchmark.name is missing"),
    ("[benchmark]\nname = 'mq-digits'\n[output]\ndir = 'x'\n[serch]\n", "unknown section [serch]"),
    ("[benchmark]\nname = 'mq-digits'\n[output]\ndir = 'x'\n[search]\npopulaton = 3\n", "unknown field search.populaton"),
    ("[benchmark]\nname = 'mq-digits'\n[output]\ndir = 'x'\n[search]\npopulation = 'big'\n",
     "search.population must be an integer"),
    ("[benchmark]\nname = 'mq-digits'\n[output]\ndir = 'x'\n[search]\nseeds = []\n", "search.seeds must be"),
    ("[benchmark\nname = 1", "not valid TOML"),
])
def test_bad_job_files_are_one_line_errors_naming_file_and_field(run, tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(JobFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Job.load(path)
    result = run("run", str(path))
    assert result.exit_code == 2 and str(path) in result.output and "Traceback" not in result.output


def test_example_jobs_parse():
    for path in sorted((ROOT / "examples").glob("job-*.toml")):
        job = Job.load(path)
        assert job.benchmark and job.out_dir


@needs_mq_digits
def test_sigterm_checkpoints_exits_3_and_the_same_job_resumes(tmp_path):
    job = _job(tmp_path, generations=40)
    env = {**os.environ, "EMQ_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "cli", "run", str(job)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "out" / "seed0-batch0" / "checkpoint" / "state.json"
    deadline = time.time() + 240
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), proc.communicate()[1][-2000:] if proc.poll() is not None else "no checkpoint in time"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err[-2000:]
    events = _events(tmp_path / "out")
    assert events == ["start", "interrupted"]
    stopped_at = json.loads(state.read_text())["generation"]
    assert stopped_at < 39
    # the same job again: it resumes from the checkpoint (a shorter budget keeps the test quick)
    job.write_text(job.read_text().replace("generations = 40", f"generations = {stopped_at + 2}"))
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == EXIT_DONE, again.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "out" / "seed0-batch0" / "log.jsonl").read_text().splitlines()]
    assert [row["gen"] for row in log] == list(range(stopped_at + 2))
    assert _events(tmp_path / "out") == ["start", "interrupted", "start", "done"]


@needs_mq_digits
def test_job_fields_reach_the_search_config_as_the_options_do(tmp_path):
    from search.session import SearchRequest, plan_search

    path = tmp_path / "job.toml"
    text = TINY.format(generations=2).replace("hof_size = 3\n", "hof_size = 3\nstrategy = 'random'\nbudget = 30\n"
                                              "hurdle_size = 12\nhurdle_quantile = 0.25\n")
    path.write_text(text)
    job = Job.load(path)
    config = plan_search(SearchRequest(job.benchmark, out=tmp_path / "out", **job.search)).search_config
    assert (config.strategy, config.budget, config.hurdle_size, config.hurdle_quantile) == ("random", 30, 12, 0.25)
    path.write_text(text.replace("hurdle_quantile = 0.25", "hurdle_quantile = 2"))
    with pytest.raises(JobFileError, match="search.hurdle_quantile must be in 0..1"):
        Job.load(path)
