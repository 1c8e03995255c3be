"""Hostile inputs, round two (issue 27): no data loss, no stale statistics, no hangs, one line for every bad value.

Each case of the issue is a test here: the CLI answers one `Error:` line and exit code 2
before any heavy work (or the acceptance is documented and tested), and the files a
command reads are byte for byte what they were.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from emq.proxy import Proxy
from search.config import SearchConfig
from search.hall_of_fame import write_hall_of_fame

from conftest import search_synthetic

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
        if setting.job and setting.job.startswith(("search.", "backend.")):
            assert name in request, f"{name}: a job-file setting SearchRequest does not take"
        if setting.cli and setting.job and setting.job.startswith("search."):
            assert name in options, f"{name}: a search setting `emq search` does not offer"
        if name in request:
            assert request[name] == setting.default, name
        if setting.cli and name in options and setting.kind not in ("ints", "names", "paths"):
            assert options[name].default == setting.default, name
    from emq.stats.config import StatsConfig

    stats = StatsConfig()
    for name in ("batch_size", "init_seed", "hessian_samples", "store_dtype", "stat_names", "device"):
        assert getattr(stats, name) == SETTINGS[name].default, name
    from search.config import SearchConfig

    engine = SearchConfig()  # the engine's own defaults (library users who build a SearchConfig directly)
    for name in ("population", "generations", "metric", "joint", "targets", "hof_size", "fitness",
                 "reject_input_independent", "strategy", "budget", "hurdle_size", "hurdle_quantile", "evolution",
                 "offspring", "sketch", "separable"):
        assert getattr(engine, name) == SETTINGS[name].default, name
    assert engine.seed == SETTINGS["seeds"].default[0]


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


# ------------------------------------------------------------------ damaged checkpoints under --resume
CONFIG = SearchConfig(population=6, generations=2, seed=0, probe_size=8, hof_size=2, targets=("test_acc",))


@pytest.fixture(scope="module")
def problem():
    from search.synthetic import synthetic_problem

    return synthetic_problem(n_search=16, n_heldout=8, probe_size=8)


def search(problem, run_dir, config=CONFIG, **kwargs):
    return search_synthetic(problem, run_dir, config, **kwargs)


@pytest.fixture(scope="module")
def finished_run(problem, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished") / "run"
    search(problem, folder)
    return folder


def _edit_state(folder: Path, edit) -> None:
    path = folder / "checkpoint" / "state.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _fifo_rng(data, folder):
    os.mkfifo(folder / "checkpoint" / "rng_torch-99999.pt")
    data["torch_rng"] = "rng_torch-99999.pt"


@pytest.mark.parametrize("edit, field", [
    (lambda d, f: d["hall_of_fame"][0]["record"].update(fitness=None), "hall_of_fame[0].record"),
    (lambda d, f: d["log"].__setitem__(0, "a string"), "log"),
    (lambda d, f: d.update(generation=-5), "generation"),
    (lambda d, f: d.update(generation=999), "generation"),
    (lambda d, f: d.update(generation=1e30), "generation"),
    (lambda d, f: d.update(population=[]), "population"),
    (lambda d, f: d.update(torch_rng="../../../etc/passwd"), "torch_rng"),
    (_fifo_rng, "FIFO"),
], ids=["null-fitness", "string-log-line", "generation-negative", "generation-999", "generation-1e30",
        "empty-population", "rng-path-elsewhere", "rng-fifo"])
def test_a_damaged_checkpoint_is_one_resume_error_naming_the_field(problem, finished_run, tmp_path, edit, field):
    from search.config import ResumeError

    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    _edit_state(folder, lambda d: edit(d, folder))
    with pytest.raises(ResumeError, match=field.replace("[", r"\[").replace("]", r"\]")) as err:
        search(problem, folder, config=SearchConfig(**{**CONFIG.to_json(), "generations": 3}), resume=True)
    assert "\n" not in str(err.value)


def test_sigterm_stops_a_large_generation_within_one_screening_batch(problem, tmp_path, monkeypatch):
    """A stop request mid-generation abandons it: the run ends unfinished, its last checkpoint stands."""
    import search.engine as engine
    import search.screener as screener
    from search.interrupt import clear_stop, request_stop

    search(problem, tmp_path / "run", config=SearchConfig(**{**CONFIG.to_json(), "generations": 1}))
    before = snapshot(tmp_path / "run" / "checkpoint")
    screened = []
    real = screener.screen_probe

    def counting(*args, **kwargs):
        screened.append(1)
        if len(screened) == 3:
            request_stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(screener, "screen_probe", counting)  # the search screens in its own process (serial)
    big = SearchConfig(**{**CONFIG.to_json(), "generations": 3, "population": 5000})
    try:
        with pytest.raises(Exception, match="population"):  # the population is part of the run's identity
            search(problem, tmp_path / "run", config=big, resume=True)
        result = search(problem, tmp_path / "fresh", config=big)
    finally:
        clear_stop()
    assert not result.finished and result.generation == -1
    assert len(screened) <= engine.SCREEN_BATCH  # stopped at the first batch boundary, not after 5,000 programs
    assert snapshot(tmp_path / "run" / "checkpoint") == before


# ------------------------------------------------------------------ damaged run folders under verdict / fit
def _edit_hall(folder: Path, edit) -> None:
    path = folder / "hall_of_fame.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(programs=[]), "hall of fame is empty"),
    (lambda d: d.update(split="all"), "field 'split'"),
    (lambda d: d.pop("benchmark"), "field 'benchmark' is missing"),
    (lambda d: d["programs"][0].update(formula="mean_layers(mean(grad))"), "its proxy is"),
], ids=["empty-programs", "split-string", "no-benchmark", "formula-disagrees"])
@pytest.mark.parametrize("command", ["verdict", "fit"])
def test_a_damaged_run_folder_is_one_line_under_verdict_and_fit(run, run_folder, edit, needle, command):
    _edit_hall(run_folder, edit)
    before = snapshot(run_folder)
    assert_one_line_error(run(command, str(run_folder)), needle)
    assert snapshot(run_folder) == before


@pytest.mark.parametrize("value", ["0", "-1", "5"])
@pytest.mark.parametrize("command", ["verdict", "fit"])
def test_too_few_bootstrap_resamples_are_refused(run, run_folder, command, value):
    assert_one_line_error(run(command, str(run_folder), "--bootstrap", value), "--bootstrap")


# ------------------------------------------------------------------ --resume with nothing to resume
def test_resume_on_a_missing_folder_is_refused(run, tmp_path):
    assert_one_line_error(run("search", "vit-digits", "--out", str(tmp_path / "typo"), "--resume"), "does not exist")
    assert not (tmp_path / "typo").exists()


def test_resume_on_a_folder_without_a_run_is_refused(run, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert_one_line_error(run("search", "vit-digits", "--out", str(tmp_path / "notes"), "--resume"),
                          "holds no run checkpoint")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["a.txt"]


# ------------------------------------------------------------------ ViT ground truth that cannot be built
def _vit_gt(tmp_path: Path, arch: dict) -> Path:
    import torch

    folder = tmp_path / "data" / "vit-bench-101"
    folder.mkdir(parents=True)
    torch.save([{"arch": arch, "c100_base_acc": 70.0}, {"arch": {**arch}, "c100_base_acc": 71.0}],
               folder / "gt_autoformer.pth")
    return tmp_path / "data"


@pytest.mark.parametrize("arch, needle", [
    ({"hidden_dim": 192, "depth": 2, "mlp_ratio": [1e-9, 4.0], "num_heads": [3, 3]}, "at least one hidden unit"),
    ({"hidden_dim": 4096, "depth": 64, "mlp_ratio": [16.0] * 64, "num_heads": [64] * 64}, "38,6"),
], ids=["mlp-ratio-1e-9", "arch-at-every-bound"])
def test_a_vit_arch_that_cannot_be_built_is_refused_at_load(run, tmp_path, arch, needle):
    data = _vit_gt(tmp_path, arch)
    assert_one_line_error(run("bench", "show", "vit-bench-101-autoformer", "--data-dir", str(data)), needle)


def test_a_network_larger_than_free_memory_is_refused_before_building():
    from emq.memory_check import NetworkTooLargeError, check_fits

    check_fits(1_000_000, "small", available=2**30)
    with pytest.raises(NetworkTooLargeError, match="900,000,000 parameters need at least 13.4 GiB"):
        check_fits(900_000_000, "big", available=8 * 2**30)


def test_vit_param_counts_without_building_match_the_built_networks():
    import torch

    from emq.models.autoformer import autoformer, autoformer_params, count_params
    from emq.models.pit import pit, pit_params

    for arch in ({"hidden_dim": 240, "depth": 3, "mlp_ratio": [4.0, 3.5, 4.0], "num_heads": [4, 3, 4]},
                 {"hidden_dim": 7, "depth": 1, "mlp_ratio": [0.5], "num_heads": [7]}):
        with torch.device("meta"):
            assert autoformer_params(arch) == count_params(autoformer(arch))
    for arch in ({"base_dim": 32, "mlp_ratio": 4, "depth": [2, 6, 4], "num_heads": [2, 4, 8]},
                 {"base_dim": 16, "mlp_ratio": [2, 4, 8], "depth": [1, 1, 1], "num_heads": [2, 2, 4]}):
        with torch.device("meta"):
            assert pit_params(arch) == count_params(pit(arch))


# ------------------------------------------------------------------ Python API
def test_act_bits_zero_is_a_bit_assignment_error_not_a_division_by_zero():
    import torch

    from emq.models.resnet import resnet18
    from emq.quant.layers import BitAssignmentError, quantizable_layers

    model = resnet18()
    bits = {name: 4 for name in quantizable_layers(model)}
    with pytest.raises(BitAssignmentError, match="act_bits must be an integer in 2..32"):
        Proxy.from_formula("sum_layers(l2(quant_error))").score(model, torch.randn(2, 3, 32, 32), bits=bits,
                                                                act_bits=0)
