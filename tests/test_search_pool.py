"""The sharded evaluation pool: every backend gives the same float32 scores; each worker loads only its shard."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from emq.evaluate import StackedStats, evaluate_stacked
from emq.proxy import Proxy
from search import shard_worker
from search.config import SearchConfig
from search.engine import run_search
from search.pool import BackendUnavailableError, EvaluationPool
from search.shard_worker import shard_bounds
from search.stats_source import StatsSource
from search.synthetic import synthetic_problem

PROGRAMS = [Proxy.from_formula(f) for f in [
    "sum_layers(s_mul(mean(hessian_diag), sum(square(quant_error))))",
    "mean_layers(l2(mul(abs(grad), weight)))",
    "sum_layers(numel(weight))",
    "sum_layers(sum(mul(bits, square(weight))))",
    "mean_layers(l2(virtual_grad))",
    "n_neg(wmean_layers(s_log(var(sub(grad, hessian_diag)))))",
]]
needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason="dask backend needs the optional 'distributed' package (pip install 'emq[dask]')")


#: A small stacking block, so the 17 test networks make several blocks (shards are whole blocks).
BLOCK = 4


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=17, n_heldout=0, probe_size=6)


@pytest.fixture(scope="module")
def spilled(problem, tmp_path_factory):
    return StatsSource.spill(problem.search, tmp_path_factory.mktemp("spill"))


def scores(backend: str, problem, source=None, **kwargs):
    with EvaluationPool(backend, n_jobs=2, block=BLOCK, **kwargs) as pool:
        data = pool.attach(problem.search, source)
        return pool.score(data, PROGRAMS), pool.worker_loads(), data


def identical(a, b):
    for (x, fx), (y, fy) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # bit-identical, NaN where the program failed
        assert fx == fy


@pytest.fixture(scope="module")
def serial(problem):
    return scores("serial", problem)[0]


def test_serial_scores_are_the_evaluator_on_the_whole_set(problem, serial):
    stacked = StackedStats(problem.search, block=BLOCK)
    identical(serial, [evaluate_stacked(p, stacked) for p in PROGRAMS])
    assert serial[4][1] == {"missing_stat": len(problem.search)}


def test_threading_and_loky_shards_give_bit_identical_scores(problem, serial, spilled):
    identical(scores("threading", problem)[0], serial)
    identical(scores("loky", problem, spilled)[0], serial)


@needs_dask
def test_dask_local_cluster_gives_bit_identical_scores(problem, serial, spilled):
    identical(scores("dask", problem, spilled)[0], serial)


@pytest.mark.parametrize("backend", ["loky", pytest.param("dask", marks=needs_dask)])
def test_each_worker_loads_only_its_shard_once(problem, spilled, backend):
    with EvaluationPool(backend, n_jobs=2, block=BLOCK) as pool:
        data = pool.attach(source=spilled)
        for _ in range(3):
            pool.score(data, PROGRAMS)
        loads = pool.worker_loads()
    expected = [b - a for a, b in shard_bounds(spilled.n, 2, BLOCK)]
    # loky workers are pinned in shard order; dask reports its workers in its own order
    assert sorted(sum(n for _, n in worker) for worker in loads) == sorted(expected)
    if backend == "loky":
        assert [sum(n for _, n in worker) for worker in loads] == expected
        for worker, shard in zip(loads, data.shards):
            assert all(token.startswith(shard.source.token) for token, _ in worker)


def test_streaming_under_a_memory_bound_gives_the_same_scores(problem, serial, spilled):
    per_network = spilled.nbytes() // spilled.n
    with EvaluationPool("loky", n_jobs=2, block=BLOCK, max_shard_bytes=3 * per_network) as pool:
        data = pool.attach(source=spilled)
        identical(pool.score(data, PROGRAMS), serial)
        identical(pool.score(data, PROGRAMS), serial)
        loads = pool.worker_loads()
    # Nothing kept: each call reads the shard again, in pieces of one block (the bound is under a block).
    assert all(n <= BLOCK for worker in loads for _, n in worker)
    assert sum(n for worker in loads for _, n in worker) == 2 * spilled.n


def test_score_takes_a_file_source_directly(problem, serial, spilled):
    with EvaluationPool("serial", block=BLOCK) as pool:
        identical(pool.score(spilled, PROGRAMS), serial)


def test_shards_are_contiguous_whole_blocks_covering_every_candidate():
    assert shard_bounds(17, 2, 4) == [(0, 8), (8, 17)]
    assert shard_bounds(3, 8, 1) == [(0, 1), (1, 2), (2, 3)]
    assert shard_bounds(3, 8, 32) == [(0, 3)]
    assert shard_bounds(0, 2) == []
    for n, k, block in [(160, 2, 32), (500, 3, 32), (7, 7, 1), (100, 3, 8)]:
        bounds = shard_bounds(n, k, block)
        assert bounds[0][0] == 0 and bounds[-1][1] == n and all(a < b for a, b in bounds)
        assert all(b1 == a2 for (_, b1), (a2, _) in zip(bounds, bounds[1:]))
        assert all(a % block == 0 for a, _ in bounds)


def test_search_results_are_identical_on_serial_and_loky(problem, tmp_path):
    config = SearchConfig(population=12, generations=3, seed=1, probe_size=6, hof_size=3, targets=("test_acc",))

    def run(backend):
        with EvaluationPool(backend, n_jobs=2, block=BLOCK) as pool:
            result = run_search(problem.search, problem.probe_other, problem.truth, config, tmp_path / backend,
                                pool=pool, progress=False, probe_index=problem.probe_index)
        log = [{k: v for k, v in row.items() if k not in ("seconds", "time", "programs_per_s")} for row in result.log]
        return [(h["formula"], h["fitness"]) for h in result.hall_of_fame], log

    assert run("loky") == run("serial")


def test_loky_workers_screen_and_the_search_matches_serial_with_hurdles_sketches_and_aging(problem, tmp_path):
    # Issue 23: a process pool's workers screen (the search process only keeps the books); the run stays the
    # run the serial pool gives, screened in the search's own process.
    config = SearchConfig(population=12, generations=4, seed=3, probe_size=6, hof_size=3, targets=("test_acc",),
                          evolution="aging", offspring=6, hurdle_size=8, hurdle_quantile=0.5, sketch=16,
                          sketch_slices=True)

    def run(backend):
        with EvaluationPool(backend, n_jobs=2, block=BLOCK) as pool:
            result = run_search(problem.search, problem.probe_other, problem.truth, config, tmp_path / backend,
                                pool=pool, progress=False, probe_index=problem.probe_index)
            loads = pool.worker_loads()
        log = [{k: v for k, v in row.items() if k not in ("seconds", "time", "programs_per_s")} for row in result.log]
        return [(h["formula"], h["fitness"]) for h in result.hall_of_fame], log, loads

    hall, log, loads = run("loky")
    assert (hall, log) == run("serial")[:2]
    assert sum(row["evaluations"] for row in log) > 0 and any(row["hurdle"]["stopped"] for row in log)
    probes = [sorted(token for token, n in worker if n == len(problem.probe_index)) for worker in loads]
    assert len(probes[0]) == 2 and probes[0] == probes[1]  # both workers hold the whole probe, both batches


def test_ray_backend_fails_clearly_when_ray_is_missing():
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed")
    with pytest.raises(BackendUnavailableError, match="pip install"):
        EvaluationPool("ray")


def test_worker_device_is_cpu_without_cuda_and_honours_an_explicit_choice():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: devices are assigned round-robin")
    assert shard_worker.worker_device() == "cpu"
    assert shard_worker.worker_device("cpu") == "cpu"


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="loky"):
        EvaluationPool("mpi")


def _leak_limit():
    from joblib.externals.loky import process_executor

    return process_executor._MAX_MEMORY_LEAK_SIZE


def test_loky_workers_keep_a_large_shard_instead_of_restarting_as_if_it_leaked():
    with EvaluationPool("loky", n_jobs=1) as pool:
        assert pool._executor(0).submit(_leak_limit).result() == float("inf")
