"""The evolutionary loop: elitism, reproducibility, resume after a stop or a SIGKILL, run-folder outputs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from emq.proxy import Proxy
from search.config import ResumeError, SearchConfig
from search.hall_of_fame import export_proxies, export_run, load_hall_of_fame
from search.subexpressions import common_subexpressions
from search.synthetic import synthetic_problem

from conftest import search_synthetic, without_timing

REPO = Path(__file__).resolve().parent.parent
CONFIG = SearchConfig(population=14, generations=5, seed=3, probe_size=8, hof_size=4, targets=("test_acc",))


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=24, n_heldout=16, probe_size=8)


def search(problem, run_dir, config=CONFIG, **kwargs):
    return search_synthetic(problem, run_dir, config, **kwargs)


def hall_formulas(result):
    return [(h["formula"], h["fitness"]) for h in result.hall_of_fame]




@pytest.fixture(scope="module")
def reference(problem, tmp_path_factory):
    return search(problem, tmp_path_factory.mktemp("reference"))


def test_same_seed_gives_same_hall_of_fame(problem, reference, tmp_path):
    again = search(problem, tmp_path / "again")
    assert hall_formulas(again) == hall_formulas(reference)
    assert without_timing(again.log) == without_timing(reference.log)


def test_different_seed_explores_differently(problem, reference, tmp_path):
    other = search(problem, tmp_path / "other", config=SearchConfig(**{**CONFIG.to_json(), "seed": 4}))
    assert without_timing(other.log) != without_timing(reference.log)


def test_best_is_never_lost_and_elites_are_carried_over(problem, reference):
    best = [row["best_ever"] for row in reference.log]
    assert best == sorted(best)
    assert all(row["best"] == row["best_ever"] for row in reference.log)  # the hall of fame is in every population
    state = json.loads((reference.run_dir / "checkpoint" / "state.json").read_text())
    fitness = [r["fitness"] for _, r in state["memo"] if r["fitness"] is not None]
    assert reference.hall_of_fame[0]["fitness"] == max(fitness)
    population = {e["formula"] for e in state["population"]}
    assert {h["formula"] for h in reference.hall_of_fame} <= population


def test_log_counts_niches_evaluations_and_rejections(reference):
    lines = (reference.run_dir / "log.jsonl").read_text().splitlines()
    assert len(lines) == CONFIG.generations
    rows = [json.loads(line) for line in lines]
    assert [r["gen"] for r in rows] == list(range(CONFIG.generations))
    for r in rows:
        assert 1 <= r["niches"] <= r["valid"] <= CONFIG.population
        assert r["evaluations"] + r["cache_hits"] >= r["evaluations"] > 0
        assert all(isinstance(n, int) and n > 0 for n in r["rejections"].values())
    assert sum(sum(r["rejections"].values()) for r in rows) > 0  # synthetic bits-only programs get screened out


def test_log_names_the_last_populations_common_subexpressions(reference):
    rows = [json.loads(line) for line in (reference.run_dir / "log.jsonl").read_text().splitlines()]
    state = json.loads((reference.run_dir / "checkpoint" / "state.json").read_text())
    population = [Proxy.from_formula(e["formula"]) for e in state["population"]]
    last = {k: rows[-1][k] for k in ("shared_subexpressions", "top_subexpression")}
    assert last == common_subexpressions(population)
    for r in rows:
        top = r["top_subexpression"]
        assert (r["shared_subexpressions"] > 0) == (top is not None)
        assert top is None or 2 <= top["programs"] <= r["population"]
    assert any(r["top_subexpression"] for r in rows)  # a selected population reuses its building blocks


def test_stop_and_resume_continues_the_same_stream(problem, reference, tmp_path):
    run = tmp_path / "resumed"
    partial = search(problem, run, stop_after=1)
    assert not partial.finished and partial.generation == 1
    resumed = search(problem, run, resume=True)
    assert resumed.finished
    assert hall_formulas(resumed) == hall_formulas(reference)
    assert without_timing(resumed.log) == without_timing(reference.log)


#: Issue 23's modes together: aging evolution, a hurdle, sketches and slices (a SIGKILL must resume them exactly).
SCALE = SearchConfig(population=14, generations=6, seed=3, probe_size=8, hof_size=4, targets=("test_acc",),
                     evolution="aging", offspring=5, hurdle_size=8, hurdle_quantile=0.5, sketch=16, sketch_slices=True)


@pytest.mark.parametrize("mode", ["generational", "aging + hurdle + sketch + slices",
                                  "aging + hurdle + sketch + slices, loky workers screening"])
def test_resume_after_sigkill_matches_uninterrupted_run(problem, reference, tmp_path, mode):
    config = CONFIG if mode == "generational" else SCALE
    loky = "loky" in mode  # killed while its workers screen and score; resumed (and the reference run) serial
    if config is not CONFIG:
        reference = search(problem, tmp_path / "reference", config)
    run = tmp_path / "killed"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from search.config import SearchConfig
        from search.engine import run_search
        from search.synthetic import synthetic_problem
        from search.pool import EvaluationPool
        p = synthetic_problem(n_search=24, n_heldout=16, probe_size=8)
        config = SearchConfig.from_json({config.to_json()!r})
        with EvaluationPool({"loky" if loky else "serial"!r}, n_jobs=2) as pool:
            run_search(p.search, p.probe_other, p.truth, config, {str(run)!r}, progress=False, pool=pool,
                       probe_index=p.probe_index, on_generation=lambda gen, row: time.sleep(0.5))
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env)
    state = run / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if state.exists() and json.loads(state.read_text())["generation"] >= 2:
                break
            assert proc.poll() is None, "the search process ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the search never reached generation 2")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(state.read_text())["generation"]
    assert killed_at < config.generations - 1
    resumed = search(problem, run, config, resume=True)
    assert hall_formulas(resumed) == hall_formulas(reference)
    assert without_timing(resumed.log) == without_timing(reference.log)


def test_resume_refuses_a_changed_config_and_fresh_start_refuses_an_existing_run(problem, tmp_path):
    run = tmp_path / "run"
    search(problem, run, stop_after=0)
    with pytest.raises(ResumeError, match="already holds"):
        search(problem, run)
    with pytest.raises(ResumeError, match="population"):
        search(problem, run, config=SearchConfig(**{**CONFIG.to_json(), "population": 20}), resume=True)


def test_more_generations_extend_a_finished_run(problem, reference, tmp_path):
    run = tmp_path / "extend"
    search(problem, run, config=SearchConfig(**{**CONFIG.to_json(), "generations": 3}))
    extended = search(problem, run, resume=True)
    assert without_timing(extended.log) == without_timing(reference.log)


def test_run_folder_holds_outputs_and_exports_proxies(problem, tmp_path):
    result = search(problem, tmp_path / "out", command="emq search synthetic")
    for name in ("log.jsonl", "hall_of_fame.json", "evolution.png", "hall_of_fame.png", "config.json"):
        assert (result.run_dir / name).is_file(), name
    data = load_hall_of_fame(result.run_dir)
    assert data["command"] == "emq search synthetic"
    best = data["programs"][0]
    assert set(best["search"]) == {"test_acc"} and "heldout" not in best  # judged held out by search.protocol
    (proxy,) = export_proxies(result.run_dir, top=1)
    assert isinstance(proxy, Proxy) and proxy.formula() == best["formula"]
    assert proxy.meta["fitness"]["search"]["test_acc"] == best["search"]["test_acc"]
    assert len(export_proxies(result.run_dir, top=3)) == min(3, len(data["programs"]))
    (single,) = export_run(result.run_dir, top=1, out=tmp_path / "proxy.json")
    assert Proxy.load(single).canonical_hash() == proxy.canonical_hash()
    several = export_run(result.run_dir, top=2, out=tmp_path / "best.json")
    assert [p.name for p in several] == ["best-1.json", "best-2.json"]


def test_joint_fitness_over_two_targets_uses_min_or_mean(problem, tmp_path):
    for mode in ("mean", "min"):
        cfg = SearchConfig(**{**CONFIG.to_json(), "targets": ["test_acc", "bit_total"], "joint": mode,
                              "generations": 2, "reject_input_independent": False})
        result = search(problem, tmp_path / mode, config=cfg)
        best = result.hall_of_fame[0]
        values = list(best["search"].values())
        expected = min(values) if mode == "min" else sum(values) / 2
        assert best["fitness"] == pytest.approx(expected)
