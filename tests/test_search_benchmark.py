"""Benchmark-level search: disjoint splits, held-out comparison with baselines, summary and export."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import emq.baselines
import emq.baselines.scoring
import emq.scoring
import search.benchmark_run
from emq.bench.base import Batch, Benchmark, Candidate
from emq.fitness import heldout_split
from emq.stats.config import StatsConfig
from search.benchmark_run import default_baselines, search_benchmark
from search.config import SearchConfig
from search.hall_of_fame import export_proxies, load_hall_of_fame
from search.synthetic import SyntheticNetworks
from conftest import expected_verdict


class FakeBenchmark(Benchmark):
    """Synthetic networks behind the Benchmark interface (their statistics come from SyntheticNetworks)."""

    name = "synthetic-mq"
    family = "mq"

    def __init__(self, n: int = 60) -> None:
        self.nets = SyntheticNetworks(n, seed=1)

    def candidates(self) -> list[Candidate]:
        return [Candidate(f"c{i}", bits=dict(c)) for i, c in enumerate(self.nets.configs)]

    def ground_truth(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.nets.truth.items()}

    def build_model(self, candidate: Candidate, init_seed: int = 0) -> nn.Module:
        raise AssertionError("statistics come from the synthetic networks")

    def batch(self, seed: int = 0, size: int = 16) -> Batch:
        return Batch(torch.zeros(size, 1), torch.zeros(size, dtype=torch.long), "synthetic", seed)


@pytest.fixture
def bench(monkeypatch):
    bench = FakeBenchmark()
    seen: dict[int, set[str]] = {}

    def fake_load(b, candidates, config=None, progress=True, cache_root=None):
        config = config or StatsConfig()
        seen.setdefault(config.batch_seed, set()).update(c.id for c in candidates)
        return [b.nets.stats(int(c.id[1:]), config.batch_seed) for c in candidates]

    monkeypatch.setattr(search.benchmark_run, "load_or_compute", fake_load)
    monkeypatch.setattr(emq.baselines.scoring, "iter_stats", lambda *args, **kwargs: iter(fake_load(*args, **kwargs)))
    monkeypatch.setattr(emq.scoring, "iter_stats", lambda *args, **kwargs: iter(fake_load(*args, **kwargs)))
    bench.seen = seen
    return bench


def test_search_benchmark_compares_hall_of_fame_with_baselines_on_heldout(bench, tmp_path):
    config = SearchConfig(population=12, generations=3, seed=0, probe_size=8, hof_size=3, targets=("test_acc",))
    result = search_benchmark(bench, StatsConfig(), config, tmp_path / "run", progress=False, n_boot=50,
                              baselines=["params", "bit_sum", "bparams", "hawq"], command="emq search synthetic-mq",
                              trivial=["params", "bit_sum", "bparams", "bops"])
    assert result.finished
    split = heldout_split(bench.candidate_ids(), config.heldout_fraction, config.split_seed)
    heldout_ids = {f"c{i}" for i in split.heldout}
    probe_ids = bench.seen[1]
    assert probe_ids and not probe_ids & heldout_ids  # the second-batch probe is part of the search split
    hall = load_hall_of_fame(result.run_dir)
    assert hall["benchmark"] == "synthetic-mq" and hall["split"]["heldout"] == len(heldout_ids)
    assert all(set(p["heldout"]) == {"test_acc"} for p in hall["programs"])
    summary = (result.run_dir / "summary.md").read_text()
    assert "emq search synthetic-mq" in summary
    for name in ("evolved #1", "params", "bit_sum", "bparams", "hawq"):
        assert f"| {name} |" in summary
    assert (result.run_dir / "scatter.png").is_file()
    (proxy,) = export_proxies(result.run_dir)
    assert proxy.meta["benchmark"] == "synthetic-mq"
    # The honest bar: the best trivial predictor was chosen on the search split and the run ends with a verdict.
    assert hall["best_trivial"]["test_acc"]["name"] in {"params", "bit_sum", "bparams", "bops"}
    assert hall["verdict"]["difference"] == hall["programs"][0]["vs_best_trivial"]
    assert hall["verdict"]["verdict"] == expected_verdict([hall["programs"][0]["vs_best_trivial"]])
    # Scores on disk: the verdict recomputed from heldout_scores.csv alone is the run's, to the last digit.
    from emq.score_table import ScoreTable
    from search.rescore import verdict_from_scores

    table = ScoreTable.read(result.run_dir / "heldout_scores.csv")
    assert set(table.candidates) == heldout_ids and list(table.truth) == ["test_acc"]
    assert {"evolved #1", "baseline:params", "baseline:hawq"} <= set(table.scores)
    again = verdict_from_scores(result.run_dir)
    assert again["agrees"] and again["verdict"]["difference"] == hall["verdict"]["difference"]
    broken = table.scores["evolved #1"].copy()
    table.scores["evolved #1"] = -broken  # a reversed ranking cannot give the same verdict numbers
    table.write(result.run_dir / "heldout_scores.csv")
    assert not verdict_from_scores(result.run_dir)["agrees"]
    assert set(hall["programs"][0]["vs_best_trivial"]) == {"value", "low", "high", "n_boot"}
    assert "## Verdict" in summary and "Verdict (this run): **" in summary
    assert proxy.meta["stats"]["calibration"] == "batch" and proxy.meta["stats"]["hessian_samples"] == 2


def test_default_baselines_for_mq_are_cheap_program_baselines():
    names = default_baselines("mq")
    assert {"params", "bit_sum", "bparams"} <= set(names)
    assert all(emq.baselines.get_baseline(n).kind == "program" for n in names)


def test_study_runs_every_seed_and_batch_seed_and_writes_one_verdict(bench, tmp_path):
    from search.study import load_study, run_study

    config = SearchConfig(population=10, generations=2, seed=0, probe_size=8, hof_size=2, targets=("test_acc",))
    study = run_study(bench, StatsConfig(), config, tmp_path / "study", [0, 1], [0, 1], search_benchmark,
                      "emq search synthetic-mq --seeds 0,1 --batch-seeds 0,1", progress=False, n_boot=30,
                      baselines=["params"], trivial=["params", "bit_sum", "bparams", "bops"])
    assert [(r["seed"], r["batch_seed"]) for r in study["runs"]] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    halls = [load_hall_of_fame(tmp_path / "study" / r["folder"]) for r in study["runs"]]
    assert [r["difference"] for r in study["runs"]] == [h["programs"][0]["vs_best_trivial"] for h in halls]
    assert study["verdict"] == expected_verdict([r["difference"] for r in study["runs"]])
    from search.rescore import study_verdict_from_scores

    again = study_verdict_from_scores(tmp_path / "study")
    assert again["agrees"] and again["verdict"] == study["verdict"] and len(again["runs"]) == 4
    assert load_study(tmp_path / "study") == study
    text = (tmp_path / "study" / "study.md").read_text()
    assert f"Verdict: **{study['verdict']}**" in text and text.count("| seed") == 0 and "| 1 | 1 |" in text
    assert (tmp_path / "study" / "seed1-batch1" / "summary.md").is_file()


def test_verdict_of_a_finished_run_matches_the_runs_own_and_closes_its_summary(bench, tmp_path, monkeypatch):
    import search.rescore
    from search.rescore import rescore_run

    monkeypatch.setattr(search.rescore, "trivial_baselines", lambda b, separable_only=False: ["params", "bit_sum", "bparams", "bops"])
    config = SearchConfig(population=12, generations=2, seed=0, probe_size=8, hof_size=3, targets=("test_acc",))
    search_benchmark(bench, StatsConfig(), config, tmp_path / "run", progress=False, n_boot=40, max_heldout=20,
                     trivial=["params", "bit_sum", "bparams", "bops"], command="emq search synthetic-mq")
    own = load_hall_of_fame(tmp_path / "run")
    record = rescore_run(bench, tmp_path / "run", StatsConfig(), n_boot=40, progress=False)
    # judged on the run's own held-out cut (--max-heldout), not on the whole held-out half
    assert own["split"]["heldout"] == 20
    assert record["heldout"]["test_acc"] == pytest.approx(own["programs"][0]["heldout"]["test_acc"])
    assert record["verdict"]["difference"] == pytest.approx(own["verdict"]["difference"])
    assert record["best_trivial"]["test_acc"]["label"] == own["best_trivial"]["test_acc"]["label"]
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert summary.count("## Verdict") == 1 and summary.rstrip().endswith(").")
    rescore_run(bench, tmp_path / "run", StatsConfig(), n_boot=40, progress=False)  # idempotent
    assert (tmp_path / "run" / "summary.md").read_text().count("## Verdict") == 1


def test_study_table_lists_the_best_trivial_per_target_in_target_order():
    from search.study import study_markdown

    run = {"seed": 0, "batch_seed": 0, "formula": "params", "heldout": {"fp_acc": 0.1, "ptq_drop": 0.0},
           "best_trivial": {"fp_acc": "flops", "ptq_drop": "-flops"}, "trivial_heldout": {"fp_acc": 0.57, "ptq_drop": 0.40},
           "difference": {"value": -0.4, "low": -0.5, "high": -0.3}, "verdict": "no discovery", "seconds": 1.0}
    same = {**run, "best_trivial": {"fp_acc": "flops", "ptq_drop": "flops"}}
    study = {"benchmark": "b", "command": "emq search b", "runs": [run, same], "planned_runs": 2, "verdict": "no discovery"}
    rows = [line for line in study_markdown(study).splitlines() if line.startswith("| 0 |")]
    assert "`flops, -flops` | +0.570, +0.400" in rows[0]  # aligned with the held-out columns, not sorted
    assert "`flops` | +0.570, +0.400" in rows[1]
