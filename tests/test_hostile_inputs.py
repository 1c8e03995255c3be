"""Hostile inputs: every bad file, path, option or environment gives one line and exit code 2, or is handled.

One test (parametrized) per case of issue 15. The CLI cases fail in option parsing
or before any heavy work, so each takes well under a second; the few library cases
that need a search use a tiny synthetic problem.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emq.atomic import write_text_atomic
from emq.errors import BuildTargetError, EMQUserError, UnsafeOutputError
from emq.paths import results_dir
from emq.proxy import MAX_DEPTH, MAX_FILE_BYTES, MAX_FORMULA_CHARS, MAX_TREE_SIZE, Proxy, ProxyFormatError
from search.config import ResumeError, SearchConfig, SeedProxyError
from search.hall_of_fame import export_run, write_hall_of_fame
from search.run_lock import RunLockedError, StaleLockWarning, acquire, release
from search.synthetic import synthetic_problem
from emq.program import parse_formula

from conftest import search_synthetic

REPO = Path(__file__).resolve().parent.parent
FORMULA = "mean_layers(l2(weight))"
needs_mq_digits = pytest.mark.skipif(not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
                                     reason="results/mq-digits is not built")


def assert_one_line_error(result, *needles: str) -> None:
    """The CLI's user-error contract: exit code 2, no traceback, one `Error:` line naming what is wrong."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A finished run folder with a two-program hall of fame (written as `emq search` writes it)."""
    folder = tmp_path / "run"
    folder.mkdir()
    hall = [{"rank": r, "formula": f, "hash": str(r), "fitness": 0.5, "search": {"test_acc": 0.5}, "size": 3}
            for r, f in ((1, FORMULA), (2, "mean_layers(mean(weight))"))]
    write_hall_of_fame(folder, hall, SearchConfig(), "emq search test")
    (folder / "config.json").write_text("{}")
    return folder


# ------------------------------------------------------------------ 1. safe writes
def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _link(tmp_path: Path) -> Path:
    (tmp_path / "target.json").write_text("keep")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    return tmp_path / "link.json"


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    return tmp_path / "dir"


def _under_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "out.json"


@pytest.mark.parametrize("make, message", [
    (lambda tmp: Path("/dev/null"), "special file"),
    (_fifo, "special file"),
    (_link, "symbolic link"),
    (_folder, "is a folder"),
    (_under_file, "not a folder"),
])
def test_atomic_write_refuses_anything_but_a_regular_file(tmp_path, make, message):
    target = make(tmp_path)
    before = os.lstat(target).st_mode if os.path.lexists(target) else None
    with pytest.raises(UnsafeOutputError, match=message):
        write_text_atomic(target, "data")
    if before is not None:
        assert os.lstat(target).st_mode == before  # the special file, link or folder is still what it was
    if (tmp_path / "target.json").exists():
        assert (tmp_path / "target.json").read_text() == "keep"
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_replaces_a_regular_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_atomic_write_into_an_unwritable_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UnsafeOutputError, match="no permission"):
        write_text_atomic(locked / "a.json", "x")


@pytest.mark.parametrize("out", ["/dev/null", "fifo", "dir"])
def test_score_out_to_a_special_file_fails_before_any_work(run, tmp_path, out):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    path = out if out.startswith("/") else str(tmp_path / out)
    result = run("score", "mq-digits", "--formula", FORMULA, "--out", path)
    assert_one_line_error(result, path)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_score_out_onto_its_own_proxy_file_is_refused(run, tmp_path):
    proxy = Proxy.from_formula(FORMULA).save(tmp_path / "p.json")
    before = proxy.read_text()
    result = run("score", "mq-digits", "--proxy", str(proxy), "--out", str(proxy))
    assert_one_line_error(result, "input of this command")
    assert proxy.read_text() == before


def test_a_report_may_not_land_inside_a_run_folder_read_as_a_proxy(run_folder):
    from search.proxy_sources import check_report_path

    with pytest.raises(UnsafeOutputError, match="input of this command"):
        check_report_path(run_folder / "hall_of_fame.json", [run_folder])
    check_report_path(run_folder / "report.json", [run_folder])  # a new file beside them is fine
    check_report_path(None, [run_folder])


@pytest.mark.parametrize("name", ["hall_of_fame.json", "config.json"])
def test_export_never_overwrites_the_run_it_reads(run, run_folder, name):
    before = (run_folder / name).read_bytes()
    result = run("export", str(run_folder), "-o", str(run_folder / name))
    assert_one_line_error(result, "input of this command")
    assert (run_folder / name).read_bytes() == before
    assert run("export", str(run_folder), "-o", str(run_folder / "proxy.json")).exit_code == 0  # still exportable


def test_export_checks_every_output_before_writing_any(run_folder, tmp_path):
    os.mkfifo(tmp_path / "p-2.json")
    with pytest.raises(UnsafeOutputError):
        export_run(run_folder, top=2, out=tmp_path / "p.json")
    assert not (tmp_path / "p-1.json").exists()


def test_export_to_a_symlink_is_refused_naming_it(run, run_folder, tmp_path):
    link = _link(tmp_path)
    assert_one_line_error(run("export", str(run_folder), "-o", str(link)), "symbolic link")
    assert (tmp_path / "target.json").read_text() == "keep"


# ------------------------------------------------------------- 2. run-folder lock
CONFIG = SearchConfig(population=6, generations=2, seed=0, probe_size=8, hof_size=2, targets=("test_acc",))


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=16, n_heldout=8, probe_size=8)


def search(problem, run_dir, config=CONFIG, **kwargs):
    return search_synthetic(problem, run_dir, config, **kwargs)


@pytest.fixture
def lock_holder(tmp_path):
    """Another live process holding the lock of tmp_path/run; yields (folder, pid)."""
    folder = tmp_path / "run"
    code = f"import sys, time; from search.run_lock import acquire; acquire({str(folder)!r}); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc.pid
    proc.kill()
    proc.wait()


def test_second_search_on_a_locked_folder_fails_at_once_naming_the_owner(problem, lock_holder):
    folder, pid = lock_holder
    start = time.perf_counter()
    with pytest.raises(RunLockedError, match=f"pid {pid} on host {socket.gethostname()}"):
        search(problem, folder)
    assert time.perf_counter() - start < 5
    assert not (folder / "config.json").exists()


@needs_mq_digits
def test_cli_search_on_a_locked_folder_is_one_line(run, lock_holder):
    folder, pid = lock_holder
    result = run("search", "mq-digits", "--backend", "serial", "--out", str(folder))
    assert_one_line_error(result, f"pid {pid}", "--out")


def test_stale_lock_of_a_dead_process_is_reported_and_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "x"}))
    with pytest.warns(StaleLockWarning, match="no longer runs"):
        acquire(folder)
    assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    release(folder)
    assert not (folder / ".lock").exists()


@pytest.fixture(scope="module")
def finished_run(problem, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished") / "run"
    search(problem, folder)
    return folder


def test_resume_with_contradicting_settings_names_each_difference(problem, finished_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    other = SearchConfig(**{**CONFIG.to_json(), "seed": 5, "generations": 3})
    with pytest.raises(ResumeError, match=r"seed: checkpoint 0, asked 5") as err:
        search(problem, folder, config=other, resume=True)
    assert "\n" not in str(err.value)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _drop_key(path: Path) -> None:
    data = json.loads(path.read_text())
    del data["population"]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage", [
    lambda cp: _truncate(cp / "state.json"),
    lambda cp: (cp / "state.json").write_text(""),
    lambda cp: _drop_key(cp / "state.json"),
    lambda cp: (cp / "state.json").write_text('{"format": "emq-search-state/1", "format": "x"}'),
    lambda cp: [_truncate(p) for p in cp.glob("rng_torch-*.pt")],
    lambda cp: [p.unlink() for p in cp.glob("rng_torch-*.pt")],
], ids=["truncated-state", "empty-state", "missing-key", "duplicate-key", "truncated-rng", "missing-rng"])
def test_damaged_checkpoint_is_a_resume_error_naming_the_folder(problem, finished_run, tmp_path, damage):
    folder = tmp_path / "run"
    shutil.copytree(finished_run, folder)
    damage(folder / "checkpoint")
    with pytest.raises(ResumeError, match="checkpoint") as err:
        search(problem, folder, config=SearchConfig(**{**CONFIG.to_json(), "generations": 3}), resume=True)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)


def test_seed_proxy_over_max_size_fails_before_writing(problem, tmp_path):
    big = "mean_layers(l2(" + "tanh(" * 25 + "weight" + ")" * 27  # tanh does not simplify away
    config = SearchConfig(**{**CONFIG.to_json(), "seed_formulas": [big]})
    with pytest.raises(SeedProxyError, match="at most 20 nodes"):
        search(problem, tmp_path / "run", config=config)
    assert not (tmp_path / "run" / "config.json").exists()


# -------------------------------------------------------- 3. validate before writing
def test_bench_build_with_zero_configs_writes_nothing(run, tmp_path, monkeypatch):
    monkeypatch.setenv("EMQ_RESULTS_DIR", str(tmp_path / "results"))
    assert_one_line_error(run("bench", "build", "mq-digits", "--num-configs", "0"), "--num-configs")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name", ["mq-digits", "vit-digits"])
def test_rebuilding_an_existing_benchmark_needs_overwrite(run, tmp_path, monkeypatch, name):
    monkeypatch.setenv("EMQ_RESULTS_DIR", str(tmp_path))
    (tmp_path / name).mkdir()
    (tmp_path / name / "ground_truth.json").write_text("keep")
    assert_one_line_error(run("bench", "build", name, "--num-configs", "2"), "--overwrite")
    assert (tmp_path / name / "ground_truth.json").read_text() == "keep"


@pytest.mark.parametrize("count", [0, -1, 10**9, 2.5])
def test_builders_validate_their_count_before_any_work(tmp_path, count):
    from emq.bench.mq_digits import build_mq_digits
    from emq.bench.vit_digits import build_vit_digits

    with pytest.raises(BuildTargetError, match="1.."):
        build_mq_digits(num_configs=count, out_dir=tmp_path, progress=False)
    with pytest.raises(BuildTargetError, match="1.."):
        build_vit_digits(num_archs=count, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------- 4. workers
@pytest.mark.parametrize("workers, message", [("0", "--workers"), ("-3", "--workers"), ("1000", "--force-workers")])
def test_workers_are_bounded(run, workers, message):
    assert_one_line_error(run("search", "mq-digits", "--workers", workers), message)


def test_crashed_pool_workers_are_reported_in_one_line():
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    from search.session import PoolWorkerDiedError, worker_crashes

    with pytest.raises(PoolWorkerDiedError, match="pool worker died") as err:
        with worker_crashes("loky"):
            raise TerminatedWorkerError("A worker process managed by the executor was unexpectedly terminated.")
    assert isinstance(err.value, EMQUserError) and "\n" not in str(err.value)  # the CLI's one line, exit code 2


def _state(pid: int) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return None
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_loky_workers_exit_when_their_parent_is_killed(tmp_path):
    code = textwrap.dedent("""
        import os, time
        from joblib import Parallel, delayed
        from search.shard_worker import watch_parent
        parent = os.getpid()
        with Parallel(n_jobs=1, backend="loky") as par:
            par(delayed(watch_parent)(parent) for _ in range(1))
            (worker,) = par(delayed(os.getpid)() for _ in range(1))
        print(worker, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    worker = int(proc.stdout.readline())
    assert _state(worker) not in (None, "Z")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _state(worker) not in (None, "Z"):
        time.sleep(0.2)
    assert _state(worker) in (None, "Z"), "the orphaned worker is still running"


# ------------------------------------------------------------ 5. cache integrity
def test_flipped_bytes_in_a_cache_file_are_detected_and_recomputed(tmp_path):
    from emq.stats.cache import read_stats, write_stats
    from tests.conftest import make_stats

    path = write_stats(tmp_path / "c.pt", "key", "c", make_stats(0))
    assert read_stats(path, "key") is not None
    data = torch.load(path, weights_only=True)
    data["layers"]["fc"]["weight"][0, 0] += 1.0  # a silent change of one value
    torch.save(data, path)
    with pytest.warns(UserWarning, match="does not match its checksum"):
        assert read_stats(path, "key") is None
    del data["checksum"]
    torch.save(data, path)
    with pytest.warns(UserWarning, match="no content checksum"):
        assert read_stats(path, "key") is None


# ------------------------------------------------------- 6. one validity rule per value
def test_one_bit_weights_are_refused_by_every_loader():
    from emq.bench.mq_bench101 import parse_bit_cfg
    from emq.quant.layers import BitAssignmentError, check_bit_assignment

    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(BitAssignmentError, match="2..32"):
        check_bit_assignment(model, {"0": 1})
    with pytest.raises(ValueError, match="2..32"):
        parse_bit_cfg([1] * 18)


def _vit_file(tmp_path: Path, records) -> Path:
    path = tmp_path / "gt_autoformer.pth"
    torch.save(records, path)
    return path


ARCH = {"hidden_dim": 24, "depth": 1, "mlp_ratio": [4.0], "num_heads": [3]}


@pytest.mark.parametrize("records, message", [
    ([{"arch": {**ARCH, "mlp_ratio": [1e30]}, "c100_kd_acc": 70.0}], "arch.mlp_ratio"),
    ([{"arch": {**ARCH, "hidden_dim": 10**9}, "c100_kd_acc": 70.0}], "arch.hidden_dim"),
    ([{"arch": ARCH, "c100_kd_acc": 0.7}, {"arch": ARCH, "c100_kd_acc": 0.6}], "looks like fractions"),
], ids=["mlp-ratio-1e30", "hidden-dim-1e9", "fractions"])
def test_vit_loader_refuses_values_the_runtime_cannot_use(tmp_path, records, message):
    from emq.bench.vit_bench101 import load_vit_bench_file
    from emq.errors import InputFileError

    with pytest.raises(InputFileError, match=message):
        load_vit_bench_file(_vit_file(tmp_path, records))


def test_vit_loader_warns_about_a_fraction_among_percentages(tmp_path):
    from emq.bench.vit_bench101 import load_vit_bench_file

    records = [{"arch": ARCH, "c100_kd_acc": v} for v in (70.0, 71.0, 0.72)]
    with pytest.warns(UserWarning, match="entry 2"):
        load_vit_bench_file(_vit_file(tmp_path, records))


def test_mq_bench_ground_truth_mixing_fractions_and_percents_is_refused(tmp_path):
    from emq.bench.mq_bench101 import MQBench101, MQBenchFileError

    path = tmp_path / "PTQ-GT.json"
    accs = [0.61, 0.62, 0.63, 64.0]
    path.write_text(json.dumps({str(i): {"bit_cfg": str([4] * 18), "acc": a} for i, a in enumerate(accs)}))
    with pytest.raises(MQBenchFileError, match="mixes fractions"):
        MQBench101(path=path)


def test_vit_ground_truth_refused_global_is_named_without_unsafe_advice(run, tmp_path):
    folder = tmp_path / "vit-bench-101"
    folder.mkdir()
    torch.save([{"arch": Path("/")}], folder / "gt_autoformer.pth")
    result = run("bench", "show", "vit-bench-101-autoformer", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "refused the global pathlib", "gt_autoformer.pth")
    assert "weights_only=False" not in result.output


def test_empty_vit_ground_truth_file_is_one_line(run, tmp_path):
    folder = tmp_path / "vit-bench-101"
    folder.mkdir()
    (folder / "gt_autoformer.pth").write_bytes(b"")
    result = run("bench", "show", "vit-bench-101-autoformer", "--data-dir", str(tmp_path))
    assert_one_line_error(result, "gt_autoformer.pth")


def test_duplicate_json_keys_are_refused(tmp_path):
    from emq.bench.gt_json import read_gt_json

    path = tmp_path / "p.json"
    text = json.dumps(Proxy.from_formula(FORMULA).to_json())
    path.write_text(text.replace('{"format": "emq-proxy/1"', '{"format": "emq-proxy/1", "format": "emq-proxy/1"', 1))
    with pytest.raises(ProxyFormatError, match="duplicate key 'format'"):
        Proxy.load(path)
    gt = tmp_path / "gt.json"
    gt.write_text('{"format": "x", "seed": 0, "seed": 5}')
    with pytest.raises(ValueError, match="duplicate key 'seed'"):
        read_gt_json(gt, "x", (), ValueError, "rebuild it")


@pytest.mark.parametrize("content", [bytes(range(256)), json.dumps({"format": "emq-proxy/1"}).encode("utf-16"), b""],
                         ids=["binary", "utf-16", "empty"])
def test_unreadable_proxy_files_are_one_line(run, tmp_path, content):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    assert_one_line_error(run("score", "mq-digits", "--proxy", str(path)), str(path))


def test_empty_batch_in_the_python_api_is_an_error_not_zero():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="batch is empty"):
        Proxy.from_formula(FORMULA).score(model, torch.zeros(0, 4))


# ------------------------------------------------------------ 7. option ranges
@pytest.mark.parametrize("args, option", [
    (["score", "mq-digits", "--formula", FORMULA, "--limit", "0"], "--limit"),
    (["score", "mq-digits", "--formula", FORMULA, "--limit", "-5"], "--limit"),
    (["score", "mq-digits", "--formula", FORMULA, "--batch-size", "0"], "--batch-size"),
    (["score", "mq-digits", "--formula", FORMULA, "--batch-size", "-1"], "--batch-size"),
    (["score", "mq-digits", "--formula", FORMULA, "--batch-size", "100000"], "--batch-size"),
    (["score", "mq-digits", "--formula", FORMULA, "--hessian-samples", "0"], "--hessian-samples"),
    (["score", "mq-digits", "--formula", FORMULA, "--bootstrap", "0"], "--bootstrap"),
    (["score", "mq-digits", "--formula", FORMULA, "--device", "nope"], "--device"),
    (["search", "mq-digits", "--generations", "-1"], "--generations"),
    (["search", "mq-digits", "--population", "0"], "--population"),
    (["stats", "mq-digits", "--limit", "0"], "--limit"),
    (["bench", "show", "mq-digits", "--limit", "0"], "--limit"),
    (["export", "runs/x", "--top", "0"], "--top"),
    (["apply", "mq", "mq-digits", "--formula", FORMULA, "--budget", "1", "--random", "-1"], "--random"),
    (["apply", "mq", "mq-digits", "--formula", FORMULA, "--budget", "1", "--population", "0"], "--population"),
    (["apply", "mq", "mq-digits", "--formula", FORMULA, "--budget", "nan"], "--budget"),
    (["apply", "vit", "vit-digits", "--formula", FORMULA, "--max-params", "10", "--generations", "0"],
     "--generations"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_nonsense_option_values_never_reach_the_library(run, args, option):
    assert_one_line_error(run(*args), option)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_one_line(run):
    assert_one_line_error(run("score", "mq-digits", "--formula", FORMULA, "--device", "cuda"), "CUDA is not available")


@needs_mq_digits
def test_score_unknown_target_names_the_columns(run):
    assert_one_line_error(run("score", "mq-digits", "--formula", FORMULA, "--targets", "nope"), "nope", "test_acc")


def test_a_huge_budget_is_no_constraint_not_an_overflow():
    from emq.apply.budget import MAX_CAP, Budget

    assert Budget(1e308).cap(1000) == MAX_CAP
    assert Budget(1e308, "avg-bits").cap(1000) == MAX_CAP


def test_user_errors_share_one_base_and_bugs_do_not():
    from emq.bench.registry import UnknownBenchmarkError
    from emq.stats import UnknownStatError
    from search.pool import BackendUnavailableError

    for cls in (ProxyFormatError, UnknownBenchmarkError, UnknownStatError, ResumeError, RunLockedError,
                BackendUnavailableError, UnsafeOutputError):
        assert issubclass(cls, EMQUserError)
    assert not issubclass(KeyError, EMQUserError)


# ------------------------------------------------------- 8. parser limits and fuzzing
def _chain_json(n: int, op: str = "abs", twice: bool = False) -> dict:
    nodes = [{"id": 0, "stat": "weight"}]
    for i in range(1, n + 1):
        nodes.append({"id": i, "op": op, "inputs": [i - 1, i - 1] if twice else [i - 1]})
    nodes.append({"id": n + 1, "op": "l2", "inputs": [n]})
    nodes.append({"id": n + 2, "op": "mean_layers", "inputs": [n + 1]})
    return {"format": "emq-proxy/1", "nodes": nodes, "output": n + 2}


@pytest.mark.parametrize("make, message", [
    (lambda: "mean_layers(" * 100_000 + "weight" + ")" * 100_000, f"at most {MAX_FORMULA_CHARS}"),
    (lambda: "mean_layers(l2(" + "abs(" * (MAX_DEPTH + 1) + "weight" + ")" * (MAX_DEPTH + 3), f"deeper than {MAX_DEPTH}"),
], ids=["too-long", "too-deep"])
def test_formula_limits_are_enforced_at_parse_time(make, message):
    text = make()
    for parse in (Proxy.from_formula, parse_formula):
        with pytest.raises(ProxyFormatError, match=message):
            parse(text)


@pytest.mark.parametrize("data, message", [
    (_chain_json(MAX_DEPTH + 5), f"deeper than {MAX_DEPTH}"),
    (_chain_json(40, op="mul", twice=True), f"more than {MAX_TREE_SIZE}"),  # 43 nodes, a formula of 2^40
], ids=["deep-chain", "exponential-dag"])
def test_json_program_limits_are_enforced_at_parse_time(data, message):
    start = time.perf_counter()
    with pytest.raises(ProxyFormatError, match=message):
        Proxy.from_json(data)
    assert time.perf_counter() - start < 2


def test_oversized_or_deeply_nested_proxy_files_are_refused(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(" " * (MAX_FILE_BYTES + 1))
    with pytest.raises(ProxyFormatError, match="at most"):
        Proxy.load(big)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ProxyFormatError, match="not valid JSON"):
        Proxy.load(deep)


NAMES = st.sampled_from(["weight", "grad", "act", "abs", "l2", "mul", "mean_layers", "sum_layers", "nope", "x"])
FORMULA_TEXT = st.recursive(
    NAMES, lambda inner: st.builds(lambda n, args: f"{n}({', '.join(args)})", NAMES, st.lists(inner, max_size=3)),
    max_leaves=30,
) | st.text(alphabet="abcdlmuw_(), 2", max_size=80)


@settings(max_examples=150, deadline=None)
@given(FORMULA_TEXT)
def test_formula_parsers_accept_or_refuse_cleanly(text):
    for parse in (Proxy.from_formula, parse_formula):
        try:
            parse(text)
        except ProxyFormatError as err:
            assert "\n" not in str(err)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 50) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "op", "stat", "inputs", "nodes", "output", "format", "meta"]), inner, max_size=5),
    max_leaves=25,
)
NODE = st.fixed_dictionaries({"id": st.integers(0, 6)}, optional={
    "op": st.sampled_from(["abs", "l2", "mul", "mean_layers", "nope"]), "stat": st.sampled_from(["weight", "x"]),
    "inputs": st.lists(st.integers(-1, 7), max_size=3)})
PROXY_JSON = st.fixed_dictionaries({"format": st.just("emq-proxy/1"), "nodes": st.lists(NODE, max_size=8),
                                    "output": st.integers(-1, 7)}) | JSON_VALUES


@settings(max_examples=200, deadline=None)
@given(PROXY_JSON)
def test_proxy_json_parser_accepts_or_refuses_cleanly(data):
    try:
        proxy = Proxy.from_json(data)
    except ProxyFormatError as err:
        assert "\n" not in str(err)
    else:
        assert Proxy.from_formula(proxy.formula()).canonical_hash() == proxy.canonical_hash()
