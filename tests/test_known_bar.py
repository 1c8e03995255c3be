"""The second bar: the best known proxy (chosen on the search split) beside the best trivial predictor."""
from __future__ import annotations

import pytest

from emq.fitness import DISCOVERY, NO_DISCOVERY, choose_best_trivial
from emq.stats.config import StatsConfig
from search.benchmark_run import search_benchmark
from search.config import RunFolderError, SearchConfig
from search.hall_of_fame import load_hall_of_fame
from search.protocol import claim
from test_search_benchmark import bench  # noqa: F401  (the synthetic benchmark fixture)

TRIVIAL = ["params", "bit_sum", "bparams", "bops"]
KNOWN = ["hawq", "snip", "grad_norm"]


def _search(bench, out, baselines, seed=0):  # noqa: F811
    config = SearchConfig(population=12, generations=2, seed=seed, probe_size=8, hof_size=3, targets=("test_acc",))
    return search_benchmark(bench, StatsConfig(), config, out, progress=False, n_boot=40, baselines=baselines,
                            trivial=TRIVIAL, command="emq search synthetic-mq")


def test_claim_needs_the_trivial_bar_before_the_known_one():
    assert claim(DISCOVERY, DISCOVERY) == "discovery over known proxies"
    assert claim(DISCOVERY, NO_DISCOVERY) == "discovery over trivial predictors"
    assert claim(NO_DISCOVERY, DISCOVERY) == NO_DISCOVERY


def test_a_run_with_known_baselines_is_judged_against_the_best_of_them_chosen_on_the_search_split(bench, tmp_path):  # noqa: F811
    from emq.baselines import baseline_scores
    from search.protocol import cut_run
    from search.rescore import verdict_from_scores

    result = _search(bench, tmp_path / "run", ["params", *KNOWN])
    hall = load_hall_of_fame(result.run_dir)
    cut = cut_run(bench, ["test_acc"], 0.5, 0, "hash")
    on_search = baseline_scores(bench, KNOWN, StatsConfig(), progress=False, candidates=cut.search)
    expected = choose_best_trivial(on_search, cut.search_truth)["test_acc"]
    assert hall["best_known"]["test_acc"]["name"] == expected.name
    best = hall["programs"][0]
    assert hall["verdict"]["over_known"]["difference"] == best["vs_best_known"]
    assert hall["verdict"]["claim"] == claim(hall["verdict"]["verdict"], hall["verdict"]["over_known"]["verdict"])
    assert "Against the best known proxy" in (result.run_dir / "summary.md").read_text()
    again = verdict_from_scores(result.run_dir)
    assert again["agrees"] and again["verdict"]["over_known"] == hall["verdict"]["over_known"]


def test_a_run_without_known_baselines_has_one_bar_and_no_claim(bench, tmp_path):  # noqa: F811
    hall = load_hall_of_fame(_search(bench, tmp_path / "run", ["params"]).run_dir)
    assert "best_known" not in hall and "claim" not in hall["verdict"] and "over_known" not in hall["verdict"]


def test_adding_the_known_bar_later_equals_judging_with_it_from_the_start(bench, tmp_path):  # noqa: F811
    from search.known_bar import add_known_bar
    from search.rescore import verdict_from_scores

    with_bar = load_hall_of_fame(_search(bench, tmp_path / "a", ["params", *KNOWN]).run_dir)
    run = _search(bench, tmp_path / "b", ["params"]).run_dir
    outcome = add_known_bar(bench, run, KNOWN, StatsConfig())
    later = load_hall_of_fame(run)
    assert outcome == later["verdict"] == with_bar["verdict"]
    assert later["best_known"] == with_bar["best_known"]
    assert [p["vs_best_known"] for p in later["programs"]] == [p["vs_best_known"] for p in with_bar["programs"]]
    assert verdict_from_scores(run)["agrees"]
    add_known_bar(bench, run, KNOWN, StatsConfig())  # idempotent: one verdict line in the summary
    assert (run / "summary.md").read_text().count("Verdict (this run):") == 1
    with pytest.raises(RunFolderError, match="name at least one known proxy"):
        add_known_bar(bench, run, ["params", "bops"], StatsConfig())


def test_a_study_states_both_verdicts_and_recomputes_them_from_its_scores(bench, tmp_path):  # noqa: F811
    from search.rescore import study_verdict_from_scores
    from search.study import load_study, run_study

    config = SearchConfig(population=10, generations=2, seed=0, probe_size=8, hof_size=2, targets=("test_acc",))
    study = run_study(bench, StatsConfig(), config, tmp_path / "study", [0, 1], [0], search_benchmark,
                      "emq search synthetic-mq --seeds 0,1", progress=False, n_boot=30,
                      baselines=["params", *KNOWN], trivial=TRIVIAL)
    assert all("difference_known" in r for r in study["runs"])
    assert study["claim"] == claim(study["verdict"], study["verdict_known"])
    again = study_verdict_from_scores(tmp_path / "study")
    assert again["agrees"] and again["verdict_known"] == study["verdict_known"]
    text = (tmp_path / "study" / "study.md").read_text()
    assert "## Against the best known proxy" in text and f"Claim: **{study['claim']}**" in text
    assert load_study(tmp_path / "study") == study


def test_a_study_short_of_its_planned_runs_recomputes_as_incomplete(bench, tmp_path):  # noqa: F811
    import json

    from search.rescore import study_verdict_from_scores
    from search.study import run_study

    config = SearchConfig(population=10, generations=2, seed=0, probe_size=8, hof_size=2, targets=("test_acc",))
    run_study(bench, StatsConfig(), config, tmp_path / "study", [0], [0], search_benchmark,
              "emq search synthetic-mq --seeds 0", progress=False, n_boot=30, baselines=["params", *KNOWN],
              trivial=TRIVIAL)
    record = json.loads((tmp_path / "study" / "study.json").read_text())
    record.update(planned_runs=2, verdict="incomplete", verdict_known="incomplete")  # one of two runs finished
    (tmp_path / "study" / "study.json").write_text(json.dumps(record))
    again = study_verdict_from_scores(tmp_path / "study")
    assert again["verdict"] == again["verdict_known"] == "incomplete" and again["agrees"]
