"""Judge a finished run folder under the honest bar: its best program against the best trivial predictor.

Runs made before the bar existed (or with other settings) keep their hall of fame;
this re-measures only what the verdict needs. The best trivial predictor per target
is chosen on the run's own search split, the best program (rank 1, chosen by the
search) is scored on the held-out split on the statistics it needs, and the paired
bootstrap difference gives the run's verdict. The result is written to
`verdict.json` and appended to `summary.md` as its closing "## Verdict" section.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from emq.atomic import write_json_atomic, write_text_atomic
from emq.baselines import baseline_scores, trivial_baselines
from emq.bench.base import Benchmark
from emq.fitness import PairedDifference, TrivialChoice, choose_best_trivial, get_metric, heldout_split, verdict
from emq.score_table import ScoreTable, ScoreTableError
from emq.scoring import check_proxies_fit
from emq.stats.cache import load_or_compute
from emq.stats.config import StatsConfig
from search.benchmark import against_trivial, run_verdict, verdict_line
from search.config import RunFolderError
from search.hall_of_fame import json_finite, load_hall_of_fame
from search.run_folder import HELDOUT_SCORES, read_run
from emq.evaluate import StackedStats, evaluate_stacked

VERDICT_FORMAT = "emq-verdict/1"


def rescore_run(bench: Benchmark, run_dir: str | Path, stats_config: StatsConfig, n_boot: int = 1000,
                progress: bool = True, cache_root: str | Path | None = None) -> dict[str, Any]:
    """Return (and write) the verdict of `run_dir`'s best program against `bench`'s best trivial predictor.

    `stats_config` must be the run's statistics settings (batch seed and size, init
    seed); its stat set may be cut to what the best program reads (the trivial
    program baselines add what they need), which is what makes large networks cheap.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if run.benchmark != bench.name:
        raise RunFolderError(f"{run_dir} is a run on {run.benchmark}, not on {bench.name}")
    search = run.config
    metric = get_metric(search.metric)
    truth = bench.ground_truth()
    targets = list(run.targets or truth)
    candidates = bench.candidates()
    split = heldout_split([c.id for c in candidates], search.heldout_fraction, search.split_seed, search.split_order)
    search_idx = split.search[:run.n_search] if run.n_search else split.search
    heldout_idx = split.heldout[:run.n_heldout] if run.n_heldout else split.heldout  # the run's own --max-heldout cut
    names = trivial_baselines(bench)

    proxy = run.program(1)
    best = run.programs[0]
    config = stats_config
    check_proxies_fit(bench, {"best": proxy}, config)
    on_search = baseline_scores(bench, names, config, progress=progress, candidates=[candidates[i] for i in search_idx],
                                cache_root=cache_root)
    choices = choose_best_trivial(on_search, {t: truth[t][search_idx] for t in targets}, metric)
    heldout_cands = [candidates[i] for i in heldout_idx]
    heldout_truth = {t: truth[t][heldout_idx] for t in targets}
    stats = load_or_compute(bench, heldout_cands, config, progress=progress, cache_root=cache_root)
    scores, failures = evaluate_stacked(proxy, StackedStats(stats, "cpu"))
    on_heldout = baseline_scores(bench, [c.name for c in choices.values()], config, progress=progress,
                                 candidates=heldout_cands, cache_root=cache_root)
    entry = {**best, **against_trivial(scores, choices, on_heldout, heldout_truth, metric, search.joint, n_boot)}
    outcome = run_verdict(entry, choices, targets)
    record = {
        "format": VERDICT_FORMAT, "benchmark": bench.name, "formula": best["formula"],
        "stats": config.describe(), "batch": bench.batch(config.batch_seed, config.batch_size).describe(),
        "best_trivial": {t: c.to_json() for t, c in choices.items()},
        "heldout": {t: metric(scores, col) for t, col in heldout_truth.items()},
        "trivial_heldout": entry["trivial_heldout"],
        "failures": dict(failures), "verdict": outcome,
    }
    write_json_atomic(run_dir / "verdict.json", json_finite(record))
    _append_verdict(run_dir / "summary.md", record)
    return record


def _append_verdict(path: Path, record: dict[str, Any]) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    text = text.split("\n## Verdict")[0].rstrip() + "\n"
    rows = ["| target | best program | best trivial (chosen on search split) | trivial held-out |", "|---|---|---|---|"]
    for t, value in record["heldout"].items():
        choice = record["best_trivial"].get(t, {})
        rows.append(f"| {t} | {value:+.3f} | `{choice.get('label', '-')}` | {record['trivial_heldout'].get(t, np.nan):+.3f} |")
    text += "\n".join(["", "## Verdict", "",
                       "Re-scored under the honest bar by `emq verdict` (held-out Kendall of the best program, "
                       "chosen by the search, against the best trivial predictor, chosen on the search split):", "",
                       *rows, "", verdict_line(record["verdict"])]) + "\n"
    write_text_atomic(path, text)


def judge_run(run_dir: str | Path, stats_config: StatsConfig, data_dir: str | Path | None = None,
              batch_source: str | None = None, n_boot: int = 1000,
              notify: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Return (and write) the verdict of `run_dir` as `rescore_run` does, on the benchmark its hall of fame names."""
    from emq.bench.registry import open_benchmark

    bench = open_benchmark(read_run(run_dir).benchmark, Path(data_dir) if data_dir else None, notify=notify, batch_source=batch_source)
    return rescore_run(bench, run_dir, stats_config, n_boot=n_boot)


def verdict_from_scores(run_dir: str | Path) -> dict[str, Any]:
    """Return a finished run's verdict recomputed from its `heldout_scores.csv` alone (no statistics, no networks).

    The file names the trivial predictor chosen per target on the search split, the
    metric, the joint mode and the bootstrap size; the paired bootstrap is rerun on the
    committed per-candidate values, so the result equals the run's own verdict exactly
    (`recorded` holds that one, from hall_of_fame.json, when the folder has it).
    """
    run_dir = Path(run_dir)
    path = run_dir / HELDOUT_SCORES
    if not path.is_file():
        raise RunFolderError(f"{path} not found: runs written before per-candidate scores existed have none; "
                             "use `emq verdict RUN` without --from-scores (it recomputes the statistics)")
    table = ScoreTable.read(path)
    meta = table.meta
    try:
        choices = {t: TrivialChoice(c["target"], c["name"], int(c["sign"]), float(c["search_value"]))
                   for t, c in meta["best_trivial"].items()}
        metric_name, joint, n_boot, formula = meta["metric"], meta["joint"], int(meta["n_boot"]), \
            meta["programs"]["evolved #1"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ScoreTableError(f"{path}: line 1 lacks {err} (best_trivial, metric, joint, n_boot, programs); "
                              "the file is damaged, rerun or restore it") from None
    missing = [c for c in ["evolved #1", *(f"baseline:{c.name}" for c in choices.values())] if c not in table.scores]
    if missing:
        raise ScoreTableError(f"{path}: column(s) {missing} missing; the file is damaged, rerun or restore it")
    trivial = {c.name: table.scores[f"baseline:{c.name}"] for c in choices.values()}
    entry = {"formula": formula, **against_trivial(table.scores["evolved #1"], choices, trivial, table.truth,
                                                    get_metric(metric_name), joint, n_boot)}
    outcome = run_verdict(entry, choices, list(table.truth))
    hall = run_dir / "hall_of_fame.json"
    recorded = load_hall_of_fame(run_dir).get("verdict") if hall.is_file() else None
    return {"format": VERDICT_FORMAT, "run": str(run_dir), "from": str(path), "verdict": outcome,
            "recorded": recorded, "agrees": recorded is None or recorded == json_finite(outcome)}


def study_verdict_from_scores(study_dir: str | Path) -> dict[str, Any]:
    """Return a study's verdict recomputed from each run's `heldout_scores.csv` (the median rule of `emq.fitness`)."""
    from search.study import load_study

    study = load_study(study_dir)
    runs = [verdict_from_scores(Path(study_dir) / r["folder"]) for r in study["runs"]]
    diffs = [PairedDifference(**r["verdict"]["difference"]) if r["verdict"].get("difference")
             else PairedDifference(*(float("nan"),) * 3, 0) for r in runs]
    outcome = verdict(diffs)
    return {"format": VERDICT_FORMAT, "study": str(study_dir), "runs": runs, "verdict": outcome,
            "recorded": study["verdict"], "agrees": outcome == study["verdict"] and all(r["agrees"] for r in runs)}
