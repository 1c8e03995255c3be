"""The evaluation pool: every backend gives the same outcomes; workers load the statistics once."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from emq.scoring import proxy_scores
from emq.proxy import Proxy
from search import pool as pool_module
from search.pool import BackendUnavailableError, EvaluationPool, StatsSource, parse_program, program_text
from search.screening import ScreenLimits
from search.synthetic import synthetic_problem

PROGRAMS = [
    "sum_layers(s_mul(mean(hessian_diag), sum(square(quant_error))))",
    "mean_layers(l2(mul(abs(grad), weight)))",
    "sum_layers(numel(weight))",
    "sum_layers(sum(mul(bits, square(weight))))",
    "mean_layers(l2(virtual_grad))",
    "n_neg(wmean_layers(s_log(var(sub(grad, hessian_diag)))))",
]


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=16, n_heldout=0, probe_size=6)


def outcomes(backend: str, problem, **kwargs):
    with EvaluationPool(backend, n_jobs=2, **kwargs) as pool:
        work = pool.workload(problem.search, problem.probe_other, problem.probe_index, ScreenLimits())
        return pool.screen(work, PROGRAMS)


def same(a, b):
    assert [o.reason for o in a] == [o.reason for o in b]
    for x, y in zip(a, b):
        assert x.hash == y.hash
        if x.scores is not None:
            np.testing.assert_allclose(x.scores, y.scores, rtol=1e-6)
            np.testing.assert_allclose(x.probe, y.probe, rtol=1e-6)


@pytest.fixture(scope="module")
def serial(problem):
    return outcomes("serial", problem)


def test_serial_outcomes_have_the_expected_reasons(serial):
    assert [o.reason for o in serial] == [None, None, "constant", "input_independent", "missing_stat", None]


def test_threading_equals_loky_equals_serial(problem, serial):
    same(outcomes("threading", problem), serial)
    same(outcomes("loky", problem), serial)


def test_dask_local_cluster_gives_the_same_outcomes(problem, serial):
    if importlib.util.find_spec("distributed") is None:
        pytest.skip("dask backend needs the optional 'distributed' package (pip install 'emq[dask]')")
    same(outcomes("dask", problem), serial)


def test_ray_backend_fails_clearly_when_ray_is_missing():
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed")
    with pytest.raises(BackendUnavailableError, match="pip install"):
        EvaluationPool("ray")


def test_statistics_are_loaded_once_per_worker(problem, monkeypatch):
    loads = []
    original = StatsSource.load
    monkeypatch.setattr(StatsSource, "load", lambda self: loads.append(self.token) or original(self))
    with EvaluationPool("threading", n_jobs=2) as pool:
        work = pool.workload(problem.search, problem.probe_other, problem.probe_index, ScreenLimits())
        for _ in range(3):
            pool.screen(work, PROGRAMS)
    assert sorted(loads) == sorted({work.search.token, work.probe_other.token})


def test_score_matches_proxy_scores_from_spilled_files(problem, tmp_path):
    source = StatsSource.spill(problem.search, tmp_path / "spill")
    assert source.n == len(problem.search) and all(p.endswith(".pt") for p in source.paths)
    proxies = [Proxy.from_formula(f) for f in PROGRAMS[:2]]
    with EvaluationPool("loky", n_jobs=2) as pool:
        results = pool.score(source, proxies)
    for proxy, (scores, failures) in zip(proxies, results):
        expected, expected_failures = proxy_scores(proxy, problem.search)
        np.testing.assert_allclose(scores, expected, rtol=1e-5)
        assert failures == expected_failures


def test_programs_travel_as_json_or_formula_text():
    proxy = Proxy.from_formula(PROGRAMS[1])
    text = program_text(proxy)
    assert text.startswith("{") and parse_program(text).canonical_hash() == proxy.canonical_hash()
    assert parse_program(PROGRAMS[1]).canonical_hash() == proxy.canonical_hash()


def test_worker_device_is_cpu_without_cuda_and_honours_an_explicit_choice():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: devices are assigned round-robin")
    assert pool_module.worker_device() == "cpu"
    assert pool_module.worker_device("cpu") == "cpu"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="loky"):
        EvaluationPool("mpi")
