"""Random search (strategy "random"): the control of evolution, on the same budget and the same bookkeeping."""
from __future__ import annotations

import json

import pytest

from emq.paths import results_dir
from emq.stats.config import StatsConfig
from search.config import SearchConfig
from search.hall_of_fame import load_hall_of_fame
from search.session import SearchRequest, run_search_request
from search.synthetic import synthetic_problem

from conftest import expected_verdict, search_synthetic, without_timing

RANDOM = SearchConfig(population=10, generations=4, seed=5, probe_size=8, hof_size=3, targets=("test_acc",),
                      strategy="random")


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=24, n_heldout=16, probe_size=8)


def search(problem, run_dir, config=RANDOM, **kwargs):
    return search_synthetic(problem, run_dir, config, **kwargs)


@pytest.fixture(scope="module")
def reference(problem, tmp_path_factory):
    return search(problem, tmp_path_factory.mktemp("random"))


def test_random_search_spends_population_times_generations(reference):
    rows = reference.log
    assert len(rows) == RANDOM.generations and reference.finished
    assert [r["population"] for r in rows] == [RANDOM.population] * RANDOM.generations
    # Every program of a generation is new or known: screened now, or a cache hit, never bred from elites.
    assert all(r["evaluations"] + r["cache_hits"] == RANDOM.population for r in rows)
    assert sum(r["evaluations"] for r in rows) > RANDOM.population * (RANDOM.generations - 1)


def test_random_search_keeps_the_hall_of_fame_across_generations(reference):
    best = [r["best_ever"] for r in reference.log]
    assert best == sorted(best)
    assert reference.hall_of_fame and reference.hall_of_fame[0]["fitness"] == best[-1]
    # Elites are not carried into the population: a generation's best may fall below the best ever.
    state = json.loads((reference.run_dir / "checkpoint" / "state.json").read_text())
    assert state["config"]["strategy"] == "random"


def test_random_search_is_reproducible_for_a_seed(problem, reference, tmp_path):
    again = search(problem, tmp_path / "again")
    assert without_timing(again.log) == without_timing(reference.log)
    assert [h["formula"] for h in again.hall_of_fame] == [h["formula"] for h in reference.hall_of_fame]


def test_random_search_differs_from_evolution_after_the_first_generation(problem, reference, tmp_path):
    evolution = SearchConfig(**{**RANDOM.to_json(), "strategy": "evolution"})
    evolved = search(problem, tmp_path / "evolved", config=evolution)
    assert without_timing(evolved.log)[0] == without_timing(reference.log)[0]  # same first population
    assert without_timing(evolved.log)[1:] != without_timing(reference.log)[1:]


def test_resumed_random_search_equals_an_uninterrupted_one(problem, reference, tmp_path):
    run_dir = tmp_path / "resumed"
    first = search(problem, run_dir, stop_after=1)
    assert not first.finished and first.generation == 1
    resumed = search(problem, run_dir, resume=True)
    assert resumed.finished
    assert without_timing(resumed.log) == without_timing(reference.log)
    assert [h["formula"] for h in resumed.hall_of_fame] == [h["formula"] for h in reference.hall_of_fame]


def test_config_without_strategy_reads_as_evolution():
    data = RANDOM.to_json()
    del data["strategy"]
    assert SearchConfig.from_json(data).strategy == "evolution"
    with pytest.raises(ValueError, match="strategy"):
        SearchConfig(strategy="annealing")


needs_mq_digits = pytest.mark.skipif(
    not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
    reason="results/mq-digits is not built (run: emq bench build mq-digits)",
)


@needs_mq_digits
def test_random_study_on_an_embedded_benchmark_breeds_nothing_resumes_and_ends_with_a_verdict(tmp_path, monkeypatch):
    import search.engine as engine

    def bred(*args, **kwargs):
        raise AssertionError("strategy random bred a program")

    monkeypatch.setattr(engine, "crossover", bred)  # every program must come from the generator
    monkeypatch.setattr(engine, "mutate", bred)
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path / "cache"))
    tiny = dict(stats=StatsConfig(batch_size=8, device="cpu"), population=6, hof_size=2, max_search=16,
                max_heldout=16, backend="serial", progress=False, command="test", strategy="random", study=True,
                hurdle_size=8)
    whole = run_search_request(SearchRequest("mq-digits", out=tmp_path / "whole", generations=3, **tiny))
    run_search_request(SearchRequest("mq-digits", out=tmp_path / "resumed", generations=2, **tiny))
    resumed = run_search_request(SearchRequest("mq-digits", out=tmp_path / "resumed", generations=3, resume=True,
                                               **tiny))
    assert whole.finished and resumed.finished
    study = json.loads((tmp_path / "resumed" / "study.json").read_text())
    assert resumed.verdict == expected_verdict([r["difference"] for r in study["runs"]])
    assert "How the runs searched: strategy random, hurdle" in resumed.report
    halls = [load_hall_of_fame(tmp_path / d / "seed0-batch0") for d in ("whole", "resumed")]
    assert [p["formula"] for p in halls[0]["programs"]] == [p["formula"] for p in halls[1]["programs"]]
    logs = [(tmp_path / d / "seed0-batch0" / "log.jsonl").read_text().splitlines() for d in ("whole", "resumed")]
    rows = [without_timing([json.loads(line) for line in log]) for log in logs]
    assert rows[0] == rows[1] and len(rows[0]) == 3
    assert all(r["evaluations"] + r["cache_hits"] == 6 for r in rows[0])
    run = tmp_path / "resumed" / "seed0-batch0"
    assert json.loads((run / "config.json").read_text())["search"]["strategy"] == "random"
    assert "strategy random" in (run / "summary.md").read_text()
