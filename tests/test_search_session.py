"""One search request for the CLI and batch jobs: defaults decided once, checks before any statistics, plain outcome."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from emq import Proxy
from emq.bench.base import UnknownTargetError
from emq.paths import results_dir
from emq.stats.config import StatsConfig
from search.config import RunFolderError
from search.hall_of_fame import HOF_FORMAT, load_hall_of_fame
from search.proxy_sources import load_proxies
from search.session import (
    SearchRequest, SearchSettingsError, check_workers, execute_search, plan_search, run_search_request,
)
from conftest import expected_verdict

needs_mq_digits = pytest.mark.skipif(
    not (results_dir() / "mq-digits" / "ground_truth.json").exists(),
    reason="results/mq-digits is not built (run: emq bench build mq-digits)",
)


@needs_mq_digits
@pytest.mark.parametrize("seeds, batch_seeds, study, folder", [
    ((3,), None, False, "runs/mq-digits-seed3"),
    ((0, 1), None, True, "runs/mq-digits-study"),
    ((0,), (0, 1), True, "runs/mq-digits-study"),
])
def test_one_run_or_a_study_and_its_default_folder_follow_the_seeds(seeds, batch_seeds, study, folder):
    plan = plan_search(SearchRequest("mq-digits", seeds=seeds, batch_seeds=batch_seeds,
                                     stats=StatsConfig(batch_seed=5)))
    assert plan.study is study and plan.run_dir == Path(folder)
    assert plan.search_config.seed == seeds[0]
    assert plan.stats_config.batch_seed == (batch_seeds or (5,))[0]
    assert plan.batch_seeds == (batch_seeds or (5,))


@needs_mq_digits
def test_a_job_asks_for_a_study_folder_even_for_one_run(tmp_path):
    plan = plan_search(SearchRequest("mq-digits", out=tmp_path, study=True))
    assert plan.study and plan.run_dir == tmp_path


@needs_mq_digits
def test_settings_are_checked_before_any_statistics():
    with pytest.raises(UnknownTargetError, match="unknown column\\(s\\) top5 for mq-digits; available: test_acc"):
        plan_search(SearchRequest("mq-digits", targets=("top5",)))
    with pytest.raises(SearchSettingsError, match="metric"):
        plan_search(SearchRequest("mq-digits", metric="pearsonish"))
    plan = plan_search(SearchRequest("mq-digits", population=4, hof_size=10))
    assert plan.search_config.hof_size == 3  # the elite never fills the whole population


def test_more_local_workers_than_cores_need_force_and_remote_ones_are_not_counted():
    with pytest.raises(SearchSettingsError, match="--force-workers"):
        check_workers("loky", 10_000)
    heard: list[str] = []
    assert check_workers("loky", 10_000, force=True, notify=heard.append) == 10_000
    assert "10000 worker process(es)" in heard[0]
    assert check_workers("dask", 10_000) == 10_000


@needs_mq_digits
def test_a_tiny_search_request_runs_and_reports_plain_data(tmp_path):
    request = SearchRequest("mq-digits", out=tmp_path / "run", stats=StatsConfig(batch_size=8, device="cpu"),
                            population=4, generations=1, max_search=12, max_heldout=12, backend="serial",
                            progress=False, command="test")
    outcome = run_search_request(request)
    data = json.loads(json.dumps(outcome.to_json()))
    assert data["finished"] and data["planned_runs"] == data["finished_runs"] == 1 and not data["study"]
    hall = load_hall_of_fame(tmp_path / "run")
    assert data["verdict"] == expected_verdict([hall["programs"][0]["vs_best_trivial"]])
    assert data["run_dir"] == str(tmp_path / "run")
    assert outcome.best_formula and outcome.report.startswith("# EMQ search on mq-digits")
    assert f"best proxy: {outcome.best_formula}" in outcome.to_text()


def test_proxies_are_named_by_file_folder_or_formula(tmp_path):
    Proxy.from_formula("sum_layers(l2(grad))").save(tmp_path / "mine.json")
    folder = tmp_path / "a-run"
    folder.mkdir()
    program = Proxy.from_formula("sum_layers(l2(act))").to_json()
    (folder / "hall_of_fame.json").write_text(json.dumps({"format": HOF_FORMAT, "programs": [{"proxy": program}]}))
    proxies = load_proxies([tmp_path / "mine.json", folder], ["sum_layers(l1(grad))", "x=sum_layers(l1(act))"])
    assert {n: p.formula() for n, p in proxies.items()} == {
        "mine": "sum_layers(l2(grad))", "a-run": "sum_layers(l2(act))", "formula1": "sum_layers(l1(grad))",
        "x": "sum_layers(l1(act))"}
    assert list(load_proxies(formulas=["sum_layers(l1(grad))"])) == ["formula"]
    (folder / "hall_of_fame.json").write_text(json.dumps({"format": HOF_FORMAT, "programs": []}))
    with pytest.raises(RunFolderError, match="hall of fame is empty"):
        load_proxies([folder])
