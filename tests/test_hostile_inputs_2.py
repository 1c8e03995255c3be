"""Hostile inputs, round two (issue 27): no data loss, no stale statistics, no hangs, one line for every bad value.

Each case of the issue is a test here: the CLI answers one `Error:` line and exit code 2
before any heavy work (or the acceptance is documented and tested), and the files a
command reads are byte for byte what they were.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from emq.proxy import Proxy
from search.config import SearchConfig
from search.hall_of_fame import write_hall_of_fame

FORMULA = "mean_layers(l2(weight))"


def assert_one_line_error(result, *needles: str) -> None:
    """The CLI's user-error contract: exit code 2, no traceback, one `Error:` line naming what is wrong."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a refused command must leave untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A finished vit-digits run folder as `emq search` leaves it: config, hall of fame, summary, checkpoint."""
    folder = tmp_path / "run"
    folder.mkdir()
    config = SearchConfig(targets=("test_acc",), population=4, hof_size=1)
    hall = [{"rank": 1, "formula": FORMULA, "hash": "1", "fitness": 0.5, "search": {"test_acc": 0.5}, "size": 3}]
    write_hall_of_fame(folder, hall, config, "emq search vit-digits",
                       meta={"benchmark": "vit-digits", "split": {"search": 8, "heldout": 8},
                             "stats": {"batch_seed": 0, "batch_size": 4, "init_seed": 0}})
    (folder / "config.json").write_text(json.dumps({"search": config.to_json(), "stats": ["weight"],
                                                    "targets": ["test_acc"]}))
    (folder / "summary.md").write_text("# summary\n")
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "state.json").write_text('{"format": "emq-search-state/1"}')
    return folder


# ------------------------------------------------------------------ data loss: no writer touches its inputs
@pytest.mark.parametrize("target", ["hall_of_fame.json", "checkpoint/state.json", "summary.json", "config.json",
                                    "verdict.json", "log.jsonl"])
def test_fit_never_writes_over_a_file_of_the_run_folder_it_reads(run, run_folder, target):
    before = snapshot(run_folder)
    result = run("fit", str(run_folder), "-o", str(run_folder / target))
    assert_one_line_error(result, "input of this command")
    assert snapshot(run_folder) == before


def test_fit_never_writes_over_its_own_proxy_file(run, tmp_path):
    proxy = Proxy.from_formula(FORMULA, meta={"benchmark": "vit-digits", "split": {"seed": 0, "heldout_fraction": 0.5},
                                              "fitness": {"search": {"test_acc": 0.5}}}).save(tmp_path / "p.json")
    before = proxy.read_bytes()
    assert_one_line_error(run("fit", str(proxy), "-o", str(proxy)), "input of this command")
    assert_one_line_error(run("fit", str(proxy), "-o", str(tmp_path / "p.md")), "same file")  # report == proxy
    assert proxy.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".md")) == ["p.json"]


def test_a_new_file_beside_the_run_folder_files_is_a_valid_output(run_folder):
    from search.fit_run import check_fit_outputs

    check_fit_outputs(run_folder, run_folder / "fitted-v2.json")  # no error
    check_fit_outputs(run_folder, run_folder / "fitted-proxy.json")  # fit's own default output


@pytest.mark.parametrize("name", ["summary.md", "config.json", "study.md"])
def test_a_search_never_writes_over_a_seed_proxy_in_its_run_folder(run, tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    seed = Proxy.from_formula(FORMULA).save(out / name)
    before = seed.read_bytes()
    result = run("search", "vit-digits", "--out", str(out), "--seed-proxies", str(seed), "--generations", "1")
    assert_one_line_error(result, "input of this command")
    assert seed.read_bytes() == before


def test_a_job_never_writes_over_its_own_job_file(tmp_path):
    from search.job import Job, JobFileError, run_job

    out = tmp_path / "out"
    out.mkdir()
    job_file = out / "study.md"
    job_file.write_text('[benchmark]\nname = "vit-digits"\n[output]\ndir = "."\n')
    before = job_file.read_bytes()
    with pytest.raises(Exception, match="input of this command"):
        run_job(Job.load(job_file), progress=False)
    assert job_file.read_bytes() == before


def test_a_run_folder_given_as_a_symbolic_link_is_refused(run, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    result = run("search", "vit-digits", "--out", str(tmp_path / "link"), "--generations", "1")
    assert_one_line_error(result, "symbolic link")
    assert list(real.iterdir()) == []


# ------------------------------------------------------------------ one owner per setting: CLI, job files, library
def test_cli_job_files_and_search_request_share_every_default():
    """`emq search`'s shown defaults, a silent job file's values and SearchRequest's defaults are one table."""
    import dataclasses

    from cli import main
    from search.job import Job
    from search.session import SearchRequest
    from search.settings import SETTINGS

    options = {p.name: p for p in main.commands["search"].params}
    request = {f.name: f.default for f in dataclasses.fields(SearchRequest)}
    job = Job.from_mapping({"benchmark": {"name": "mq-digits"}, "output": {"dir": "x"}}, Path("job.toml"))
    assert job.search == {} and job.stats == {}  # a silent job file takes SearchRequest's defaults
    for name, setting in SETTINGS.items():
        if name in request:
            assert request[name] == setting.default, name
        if setting.cli and name in options and setting.kind not in ("ints", "names", "paths"):
            assert options[name].default == setting.default, name
    from emq.stats_cache import StatsConfig

    stats = StatsConfig()
    for name in ("batch_size", "init_seed", "hessian_samples", "store_dtype", "stat_names", "device"):
        assert getattr(stats, name) == SETTINGS[name].default, name


BIG = 2**63 - 1
JOB_HEAD = "[benchmark]\nname = 'mq-digits'\n[output]\ndir = 'out'\n"


@pytest.mark.parametrize("body, field, message", [
    ("[backend]\nname = 'nope'\n", "backend.name", "must be one of serial"),
    ("[stats]\nbatch_size = 100000\n", "stats.batch_size", "1..1024"),
    ("[stats]\ndevice = 'nope'\n", "stats.device", "not a torch device"),
    ("[backend]\ndevice = 'nope'\n", "backend.device", "not a torch device"),
    ("[search]\nmax_heldout = 2.5\n", "search.max_heldout", "must be an integer"),
    ("[search]\ntargets = 5\n", "search.targets", "non-empty list"),
    ("[search]\ntargets = [1, 2]\n", "search.targets", "must be a string"),
    (f"[search]\npopulation = {BIG}\n", "search.population", "2..100000"),
    ("[search]\npopulation = 1e20\n", "search.population", "must be an integer"),
    ("[search]\ngenerations = 0\n", "search.generations", "1..100000"),
    ("[backend]\nworkers = 0\n", "backend.workers", "1..1024"),
    ("[search]\nmax_search = -1\n", "search.max_search", "0..1e+07"),
    ("[search]\nseeds = [0, -1]\n", "search.seeds", "0..2.14748e+09"),
    ("[stats]\nstats = ['wieght']\n", "stats.stats", "wieght"),
])
def test_bad_job_fields_are_one_line_naming_the_field(run, tmp_path, body, field, message):
    job = tmp_path / "job.toml"
    job.write_text(JOB_HEAD + body)
    result = run("run", str(job))
    assert_one_line_error(result, str(job), message)
    if field != "stats.stats":
        assert f"field {field}" in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_job_asking_for_cuda_on_a_cpu_machine_is_one_line(run, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(JOB_HEAD + "[stats]\ndevice = 'cuda'\n")
    assert_one_line_error(run("run", str(job)), "field stats.device", "CUDA is not available")


def test_a_deeply_nested_job_file_is_one_line(run, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(JOB_HEAD + "[search]\ntargets = " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_error(run("run", str(job)), str(job), "nested too deeply")


@pytest.mark.parametrize("option, value", [("--population", str(BIG)), ("--generations", "0"), ("--workers", "0"),
                                           ("--max-search", "-1"), ("--hof-size", str(BIG))])
def test_size_options_out_of_bounds_are_one_line(run, option, value):
    assert_one_line_error(run("search", "mq-digits", option, value), option)


def test_the_library_refuses_the_same_bounds(tmp_path):
    from search.session import SearchRequest, plan_search
    from search.settings import SettingError

    with pytest.raises(SettingError, match="--population must be in 2..100000"):
        plan_search(SearchRequest("mq-digits", population=BIG, out=tmp_path / "x"))


# ------------------------------------------------------------------ no hangs: FIFOs where a file is read
@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def test_a_fifo_as_proxy_file_is_one_line_without_blocking(run, fifo):
    assert_one_line_error(run("score", "mq-digits", "--proxy", str(fifo)), str(fifo), "FIFO")


def test_a_fifo_as_job_file_is_one_line_without_blocking(run, fifo):
    assert_one_line_error(run("run", str(fifo)), str(fifo), "FIFO")
