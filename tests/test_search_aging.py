"""Aging (regularized) evolution: the population is a queue in which each child replaces the oldest program."""
from __future__ import annotations

import json

import pytest

from emq.paths import results_dir
from emq.stats.config import StatsConfig
from search.config import ResumeError, SearchConfig
from search.hall_of_fame import load_hall_of_fame
from search.job import Job, JobFileError
from search.session import SearchRequest, SearchSettingsError, plan_search, run_search_request
from search.synthetic import synthetic_problem

from conftest import expected_verdict, search_synthetic, without_timing

AGING = SearchConfig(population=12, generations=6, seed=2, probe_size=8, hof_size=3, targets=("test_acc",),
                     evolution="aging", offspring=4)


@pytest.fixture(scope="module")
def problem():
    return synthetic_problem(n_search=24, n_heldout=16, probe_size=8)


def search(problem, run_dir, config=AGING, **kwargs):
    return search_synthetic(problem, run_dir, config, **kwargs)


def checkpointed_population(run_dir) -> list[str]:
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    return [e["formula"] for e in state["population"]]


@pytest.fixture(scope="module")
def reference(problem, tmp_path_factory):
    """An aging run, with the population (oldest first) as checkpointed after every generation."""
    run_dir = tmp_path_factory.mktemp("aging")
    populations = {}

    def note(gen, row):
        populations[gen] = checkpointed_population(run_dir)

    result = search(problem, run_dir, on_generation=note)
    return result, populations


def test_each_child_joins_the_queue_and_the_oldest_leave(reference):
    result, populations = reference
    assert result.finished and len(result.log) == AGING.generations
    for gen in range(2, AGING.generations):
        before, after = populations[gen - 1], populations[gen]
        assert len(before) == len(after) == AGING.population
        children = after[-AGING.offspring:]
        assert after == before[AGING.offspring:] + children  # the previous minus its oldest, plus the children
        assert not set(children) & set(before)  # children are new to the queue (no duplicate of a living program)
    for row in result.log[1:]:
        assert row["evaluations"] + row["cache_hits"] == AGING.offspring  # one batch of children per generation
        assert row["population"] == AGING.population


def test_aging_keeps_the_best_in_the_hall_of_fame_not_in_the_population(reference):
    result, _ = reference
    best = [row["best_ever"] for row in result.log]
    assert best == sorted(best)
    assert result.hall_of_fame and result.hall_of_fame[0]["fitness"] == best[-1]


def test_aging_run_is_reproducible_for_a_seed(problem, reference, tmp_path):
    again = search(problem, tmp_path / "again")
    assert without_timing(again.log) == without_timing(reference[0].log)
    assert [h["formula"] for h in again.hall_of_fame] == [h["formula"] for h in reference[0].hall_of_fame]


def test_aging_differs_from_generational_evolution_after_the_first_generation(problem, reference, tmp_path):
    generational = search(problem, tmp_path / "gen", config=SearchConfig(**{**AGING.to_json(),
                                                                           "evolution": "generational"}))
    assert without_timing(generational.log)[0] == without_timing(reference[0].log)[0]  # same first population
    assert without_timing(generational.log)[1:] != without_timing(reference[0].log)[1:]


def test_resumed_aging_run_equals_an_uninterrupted_one(problem, reference, tmp_path):
    run_dir = tmp_path / "resumed"
    first = search(problem, run_dir, stop_after=2)
    assert not first.finished and first.generation == 2
    resumed = search(problem, run_dir, resume=True)
    assert resumed.finished
    assert without_timing(resumed.log) == without_timing(reference[0].log)
    assert [h["formula"] for h in resumed.hall_of_fame] == [h["formula"] for h in reference[0].hall_of_fame]
    assert checkpointed_population(run_dir) == checkpointed_population(reference[0].run_dir)


def test_aging_with_hurdles_and_a_budget_stops_early_and_resumes_exactly(problem, tmp_path):
    config = SearchConfig(**{**AGING.to_json(), "hurdle_size": 8, "budget": 30, "generations": 50})
    whole = search(problem, tmp_path / "whole", config=config)
    spent = [row["evaluations"] for row in whole.log]
    assert whole.finished and len(whole.log) < 50
    assert sum(spent) >= 30 and sum(spent[:-1]) < 30  # ends after the generation that reaches the budget
    assert all("hurdle" in row for row in whole.log)
    search(problem, tmp_path / "resumed", config=config, stop_after=1)
    resumed = search(problem, tmp_path / "resumed", config=config, resume=True)
    assert without_timing(resumed.log) == without_timing(whole.log)


def test_aging_settings_are_checked_and_old_configs_read_as_generational():
    data = AGING.to_json()
    del data["evolution"], data["offspring"]
    old = SearchConfig.from_json(data)
    assert old.evolution == "generational" and old.offspring is None
    assert SearchConfig(population=40, evolution="aging").offspring_size() == 10  # a quarter of the population
    assert "evolution aging (4 children per generation)" in AGING.strategy_text()
    assert old.strategy_text() == "strategy evolution"  # generational runs describe themselves as before
    with pytest.raises(ValueError, match="evolution must be one of"):
        SearchConfig(evolution="steady")
    with pytest.raises(ValueError, match="needs strategy 'evolution'"):
        SearchConfig(evolution="aging", strategy="random")
    with pytest.raises(ValueError, match="offspring must be in 1..population"):
        SearchConfig(population=10, evolution="aging", offspring=11)


def test_a_checkpoint_of_the_previous_engine_is_refused_in_one_line(problem, tmp_path):
    run_dir = tmp_path / "old"
    search(problem, run_dir, stop_after=0)
    path = run_dir / "checkpoint" / "state.json"
    data = json.loads(path.read_text())
    data.update(format="emq-search-state/1", engine="emq-search/1")
    path.write_text(json.dumps(data))
    with pytest.raises(ResumeError, match="previous engine .emq-search/1.*start a new run folder") as err:
        search(problem, run_dir, resume=True)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


needs_mq_digits = pytest.mark.skipif(
    not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
    reason="results/mq-digits is not built (run: emq bench build mq-digits)",
)


@needs_mq_digits
def test_aging_search_on_an_embedded_benchmark_resumes_and_ends_with_a_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("EMQ_CACHE_DIR", str(tmp_path / "cache"))
    tiny = dict(stats=StatsConfig(batch_size=8, device="cpu"), population=6, offspring=3, hof_size=2, max_search=16,
                max_heldout=16, backend="serial", progress=False, command="test", evolution="aging", budget=14,
                generations=20)
    whole = run_search_request(SearchRequest("mq-digits", out=tmp_path / "whole", **tiny))
    run_search_request(SearchRequest("mq-digits", out=tmp_path / "resumed", **{**tiny, "generations": 2}))
    resumed = run_search_request(SearchRequest("mq-digits", out=tmp_path / "resumed", resume=True, **tiny))
    assert whole.finished and resumed.finished
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()]
            for d in ("whole", "resumed")]
    assert without_timing(logs[0]) == without_timing(logs[1]) and len(logs[0]) < 20  # the budget ended it
    halls = [load_hall_of_fame(tmp_path / d) for d in ("whole", "resumed")]
    assert [p["formula"] for p in halls[0]["programs"]] == [p["formula"] for p in halls[1]["programs"]]
    hall = halls[1]
    assert resumed.verdict == hall["verdict"]["verdict"] == expected_verdict([hall["programs"][0]["vs_best_trivial"]])
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["search"]["evolution"] == "aging"


@needs_mq_digits
def test_aging_options_reach_the_search_config_and_bad_ones_are_one_line(tmp_path):
    request = SearchRequest("mq-digits", out=tmp_path / "out", evolution="aging", offspring=5, population=20)
    assert _planned(request) == ("aging", 5)
    with pytest.raises(SearchSettingsError, match="offspring must be in 1..population"):
        _planned(SearchRequest("mq-digits", out=tmp_path / "out", evolution="aging", offspring=30, population=20))
    job = tmp_path / "job.toml"
    job.write_text("[benchmark]\nname = 'mq-digits'\n[search]\npopulation = 20\nevolution = 'aging'\noffspring = 6\n"
                   "[output]\ndir = 'out'\n")
    loaded = Job.load(job)
    assert _planned(SearchRequest(loaded.benchmark, out=tmp_path / "job-out", **loaded.search)) == ("aging", 6)
    job.write_text(job.read_text().replace("'aging'", "'steady'"))
    with pytest.raises(JobFileError, match="search.evolution must be one of generational, aging"):
        Job.load(job)


def _planned(request):
    config = plan_search(request).search_config
    return config.evolution, config.offspring
