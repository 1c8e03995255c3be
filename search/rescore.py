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
from emq.baselines import trivial_baselines
from emq.bench.base import Benchmark
from emq.fitness import TrivialChoice, get_metric
from emq.score_table import ScoreTableError
from emq.scoring import check_proxies_fit
from emq.stats.config import StatsConfig
from search.config import RunFolderError
from search.hall_of_fame import json_finite
from search.protocol import (
    against_trivial, choose_trivial, cut_run, run_verdict, score_heldout, trivial_on_heldout, verdict_line,
)
from search.run_folder import RunFolder, read_run

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
    targets = list(run.targets or bench.ground_truth())
    # the run's own --max-search / --max-heldout cut
    cut = cut_run(bench, targets, search.heldout_fraction, search.split_seed, search.split_order, run.n_search,
                  run.n_heldout)
    proxy = run.program(1)
    best = run.programs[0]
    config = stats_config
    check_proxies_fit(bench, {"best": proxy}, config)
    choices = choose_trivial(bench, trivial_baselines(bench, search.separable), config, cut, metric, progress,
                             cache_root)
    ((scores, failures),) = score_heldout([proxy], bench, cut, config, progress=progress, cache_root=cache_root)
    on_heldout = trivial_on_heldout(bench, choices, config, cut, progress, cache_root)
    entry = {**best, **against_trivial(scores, choices, on_heldout, cut.heldout_truth, metric, search.joint, n_boot)}
    outcome = run_verdict(entry, choices, targets)
    record = {
        "format": VERDICT_FORMAT, "benchmark": bench.name, "formula": best["formula"],
        "stats": config.describe(), "batch": bench.batch(config.batch_seed, config.batch_size).describe(),
        "best_trivial": {t: c.to_json() for t, c in choices.items()},
        "heldout": {t: metric(scores, col) for t, col in cut.heldout_truth.items()},
        "trivial_heldout": entry["trivial_heldout"],
        "failures": dict(failures), "verdict": outcome,
    }
    folder = RunFolder(run_dir)
    write_json_atomic(folder.verdict_file, json_finite(record))
    _append_verdict(folder.summary, record)
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
    folder = RunFolder(run_dir)
    path = folder.scores_file
    table = folder.read_scores()
    meta = table.meta
    try:
        choices, known = _choices(meta["best_trivial"]), _choices(meta.get("best_known", {}))
        metric_name, joint, n_boot, formula = meta["metric"], meta["joint"], int(meta["n_boot"]), \
            meta["programs"]["evolved #1"]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ScoreTableError(f"{path}: line 1 lacks {err} (best_trivial, metric, joint, n_boot, programs); "
                              "the file is damaged, rerun or restore it") from None
    wanted = ["evolved #1", *(f"baseline:{c.name}" for c in [*choices.values(), *known.values()])]
    missing = [c for c in wanted if c not in table.scores]
    if missing:
        raise ScoreTableError(f"{path}: column(s) {missing} missing; the file is damaged, rerun or restore it")
    values = {c.name: table.scores[f"baseline:{c.name}"] for c in [*choices.values(), *known.values()]}
    metric, program = get_metric(metric_name), table.scores["evolved #1"]
    entry = {"formula": formula, **against_trivial(program, choices, values, table.truth, metric, joint, n_boot)}
    if known:
        entry.update(against_trivial(program, known, values, table.truth, metric, joint, n_boot, bar="known"))
    outcome = run_verdict(entry, choices, list(table.truth), known)
    recorded = folder.read_hall().get("verdict") if folder.hall_file.is_file() else None
    return {"format": VERDICT_FORMAT, "run": str(run_dir), "from": str(path), "verdict": outcome,
            "recorded": recorded, "agrees": recorded is None or recorded == json_finite(outcome)}


def _choices(recorded: dict[str, Any]) -> dict[str, TrivialChoice]:
    """Return the per-target choices a score table's first line records (`best_trivial` / `best_known`)."""
    return {t: TrivialChoice.from_json(c) for t, c in recorded.items()}


def study_verdict_from_scores(study_dir: str | Path) -> dict[str, Any]:
    """Return a study's verdict recomputed from each run's `heldout_scores.csv` (the median rule of `emq.fitness`)."""
    from search.study import load_study, study_verdict

    study = load_study(study_dir)
    runs = [verdict_from_scores(Path(study_dir) / r["folder"]) for r in study["runs"]]
    complete = len(runs) == study.get("planned_runs", len(runs))  # a study short of its planned runs has no verdict
    outcome = study_verdict([r["verdict"].get("difference") for r in runs], complete)
    record = {"format": VERDICT_FORMAT, "study": str(study_dir), "runs": runs, "verdict": outcome,
              "recorded": study["verdict"], "agrees": outcome == study["verdict"] and all(r["agrees"] for r in runs)}
    if "verdict_known" in study:  # the second bar: every run's difference against its best known proxy
        record["verdict_known"] = study_verdict(
            [(r["verdict"].get("over_known") or {}).get("difference") for r in runs], complete)
        record["agrees"] = record["agrees"] and record["verdict_known"] == study["verdict_known"]
    return record

