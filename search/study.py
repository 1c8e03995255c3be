"""A discovery claim across seeds: one search per (search seed, batch seed), and one verdict over them all.

A single search can win by luck of its seed or of its batch. The study repeats it
for every search seed x batch seed, each run on the same split, and calls it a
discovery only when, in the median over runs, the paired bootstrap interval of
held-out Kendall(best program) - Kendall(best trivial predictor) lies above 0
(`emq.fitness.verdict`). `study.md` lists every run beside the verdict.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from emq.atomic import write_json_atomic, write_text_atomic
from emq.bench.base import Benchmark
from emq.fitness import PairedDifference, verdict
from emq.safe_read import MAX_JSON_BYTES, read_text_limited
from emq.stats.config import StatsConfig
from emq.strict_json import loads_strict
from search.config import RunFolderError, SearchConfig
from search.protocol import claim
from search.run_folder import RunFolder

STUDY_FORMAT = "emq-study/1"


def run_folder(out_dir: Path, seed: int, batch_seed: int) -> Path:
    """Return the run folder of one (search seed, batch seed) inside a study folder."""
    return out_dir / f"seed{seed}-batch{batch_seed}"


def run_study(
    bench: Benchmark,
    stats_config: StatsConfig,
    search_config: SearchConfig,
    out_dir: str | Path,
    seeds: Sequence[int],
    batch_seeds: Sequence[int],
    run_one: Callable[..., Any],
    command: str,
    **search_options: Any,
) -> dict[str, Any]:
    """Run `run_one` (search.benchmark_run.search_benchmark) per seed x batch seed, then write study.json / study.md.

    Each run keeps its own folder (resumable on its own); the study's files are
    rewritten after every run, so a killed study shows what finished.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    previous = _previous_seconds(out_dir)
    ceiling = heldout_ceiling(bench, search_config, search_options.get("max_search"), search_options.get("max_heldout"))
    for batch_seed in batch_seeds:
        for seed in seeds:
            folder = run_folder(out_dir, seed, batch_seed)
            run_config = dataclasses.replace(search_config, seed=seed)
            if search_options.get("resume") and finished_run(folder, run_config, batch_seed):
                runs.append(_run_row(folder, seed, batch_seed, previous.get(folder.name, 0.0)))
                continue
            start = time.perf_counter()
            result = run_one(bench, dataclasses.replace(stats_config, batch_seed=batch_seed), run_config, folder, command=command, **search_options)
            if not result.finished:
                break
            runs.append(_run_row(folder, seed, batch_seed, time.perf_counter() - start))
            write_study(out_dir, bench.name, command, runs, len(seeds) * len(batch_seeds), ceiling)
    return write_study(out_dir, bench.name, command, runs, len(seeds) * len(batch_seeds), ceiling)


def heldout_ceiling(bench: Benchmark, config: SearchConfig, max_search: int | None,
                    max_heldout: int | None) -> dict[str, dict[str, Any]]:
    """Return, per target, the replicate ceiling on the study's held-out candidates ({} when the benchmark has none).

    Separately trained twins of one function bound the Kendall any proxy can reach; the
    study prints it beside its verdict so a gap to it is read as room, not as noise.
    """
    from emq.scoring import ceiling_rows
    from search.protocol import cut_run

    targets = list(config.targets or bench.ground_truth())
    cut = cut_run(bench, targets, config.heldout_fraction, config.split_seed, config.split_order,
                  max_search, max_heldout)
    return {row.target: {"kendall": row.kendall, "spearman": row.spearman, "n_cells": row.n, "about": row.flags[0]}
            for row in ceiling_rows(bench, cut.heldout, cut.heldout_truth)}


def finished_run(folder: Path, config: SearchConfig, batch_seed: int) -> bool:
    """Whether `folder` holds a finished run (held-out verdict written) of exactly this config and batch seed.

    A resumed study keeps such runs instead of repeating them; a run of other settings is
    left to `run_search`, which refuses it with the contradicting fields.
    """
    run = RunFolder(folder)
    try:
        hall = run.read_hall()
        saved = run.search_config()
    except (OSError, ValueError, RunFolderError):
        return False
    return ("verdict" in hall and saved == config
            and (hall.get("batch") or {}).get("seed") == batch_seed)


def _previous_seconds(out_dir: Path) -> dict[str, float]:
    """Return the wall seconds per run folder recorded by an earlier pass of this study (kept on resume)."""
    try:
        return {r["folder"]: float(r["seconds"]) for r in load_study(out_dir)["runs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _run_row(folder: Path, seed: int, batch_seed: int, seconds: float) -> dict[str, Any]:
    hall = RunFolder(folder).read_hall()
    best = hall["programs"][0] if hall["programs"] else {}
    return {"seed": seed, "batch_seed": batch_seed, "folder": folder.name, "seconds": round(seconds, 1),
            "formula": best.get("formula"), "heldout": best.get("heldout"),
            "best_trivial": {t: c["label"] for t, c in hall.get("best_trivial", {}).items()},
            "trivial_heldout": hall.get("trivial_heldout", {}),
            "difference": best.get("vs_best_trivial"), "verdict": hall.get("verdict", {}).get("verdict"),
            "search": _search_text(folder), **_known_columns(hall, best)}


def _search_text(folder: Path) -> str | None:
    """Return how the run in `folder` searched (strategy, budget, hurdle), None when its config.json is unreadable."""
    try:
        return RunFolder(folder).search_config().strategy_text()
    except (OSError, ValueError, RunFolderError):
        return None


def _known_columns(hall: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """Return a run row's second-bar fields (best known proxy, its held-out value, the difference), {} without one."""
    if "best_known" not in hall:
        return {}
    return {"best_known": {t: c["label"] for t, c in hall["best_known"].items()},
            "known_heldout": best.get("known_heldout", {}), "difference_known": best.get("vs_best_known")}


def write_study(out_dir: Path, bench_name: str, command: str, runs: list[dict[str, Any]], planned: int,
                ceiling: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write study.json and study.md for the runs so far (with the held-out replicate ceiling) and return the record."""
    complete = len(runs) == planned
    outcome = study_verdict([r.get("difference") for r in runs], complete)
    study = {"format": STUDY_FORMAT, "benchmark": bench_name, "command": command, "runs": runs,
             "planned_runs": planned, "verdict": outcome, "replicate_ceiling": ceiling or {}}
    if runs and all("difference_known" in r for r in runs):  # the second bar, when every run measured it
        study["verdict_known"] = study_verdict([r.get("difference_known") for r in runs], complete)
        study["claim"] = claim(outcome, study["verdict_known"]) if complete else "incomplete"
    write_json_atomic(out_dir / "study.json", study)
    write_text_atomic(out_dir / "study.md", study_markdown(study))
    return study


def study_verdict(differences: Sequence[Mapping[str, Any] | None], complete: bool) -> str:
    """Return the median-rule verdict of the runs' paired differences, "incomplete" short of the planned runs.

    A run without a difference counts as NaN: it cannot count as a win. Used by the study
    itself and by `emq verdict --from-scores`, so both apply one rule.
    """
    if not complete:
        return "incomplete"
    return verdict([PairedDifference(**d) if d else PairedDifference(*(float("nan"),) * 3, 0) for d in differences])


def study_markdown(study: dict[str, Any]) -> str:
    """Return the study table: one line per run, then the verdict line."""
    lines = [f"# Study on {study['benchmark']}", "", "Produced by:", "", f"    {study['command']}", "",
             "Each run: the best program of the hall of fame (chosen on the search split) against the best trivial "
             "predictor (chosen on the search split), both measured on the held-out split; the difference is "
             "paired-bootstrapped over held-out candidates.", "",
             "| search seed | batch seed | best program | held-out Kendall | best trivial | trivial held-out | "
             "difference [95% CI] | run | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in study["runs"]:
        held = ", ".join(f"{v:+.3f}" for v in (r["heldout"] or {}).values() if v is not None) or "n/a"
        labels = list(r["best_trivial"].values())  # in target order, aligned with the held-out columns
        triv = (labels[0] if len(set(labels)) == 1 else ", ".join(labels)) if labels else "none"
        triv_held = ", ".join(f"{v:+.3f}" for v in r.get("trivial_heldout", {}).values()) or "n/a"
        d = r["difference"]
        diff = f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "n/a"
        lines.append(f"| {r['seed']} | {r['batch_seed']} | `{r['formula']}` | {held} | `{triv}` | {triv_held} | "
                     f"{diff} | {r['verdict']} | {r['seconds']:.0f} |")
    lows = [r["difference"]["low"] for r in study["runs"] if r["difference"]]
    lines += ["", f"Runs: {len(study['runs'])} of {study['planned_runs']}."]
    searches = sorted({r["search"] for r in study["runs"] if r.get("search")})  # rows of older studies lack it
    if searches:
        lines.append(f"How the runs searched: {'; '.join(searches)}.")
    if lows:
        lines.append(f"Median lower bound of the paired 95% intervals: {float(np.median(lows)):+.3f} "
                     "(a discovery needs it above 0).")
    lines += ["", f"Verdict: **{study['verdict']}**", ""]
    if "verdict_known" in study:
        lines += _known_table(study)
    for target, c in study.get("replicate_ceiling", {}).items():
        lines.append(f"Replicate ceiling ({target}, held out): Kendall {c['kendall']:+.3f}, Spearman {c['spearman']:+.3f} "
                     f"on the {c['n_cells']} held-out cells with a separately trained twin ({c['about']}): the best "
                     "rank agreement the ground truth's own training noise allows any proxy.")
    return "\n".join(lines) + ("\n" if study.get("replicate_ceiling") else "")


def _known_table(study: dict[str, Any]) -> list[str]:
    """Return the study's second-bar section: each run's best program against the best known proxy, then the claim."""
    lines = ["## Against the best known proxy", "",
             "The best of the run's known-proxy baselines (chosen per target on the search split, like the trivial "
             "predictor), on the same held-out candidates.", "",
             "| search seed | batch seed | best known | known held-out | difference [95% CI] |", "|---|---|---|---|---|"]
    for r in study["runs"]:
        d = r.get("difference_known")
        diff = f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "n/a"
        labels = ", ".join(dict.fromkeys(r["best_known"].values()))
        held = ", ".join(f"{v:+.3f}" for v in r["known_heldout"].values() if v is not None) or "n/a"
        lines.append(f"| {r['seed']} | {r['batch_seed']} | `{labels}` | {held} | {diff} |")
    lows = [r["difference_known"]["low"] for r in study["runs"] if r.get("difference_known")]
    if lows:
        lines += ["", f"Median lower bound against the best known proxy: {float(np.median(lows)):+.3f}."]
    lines += ["", f"Verdict over known proxies: **{study['verdict_known']}**. Claim: **{study['claim']}**.", ""]
    return lines


def refresh_study(out_dir: str | Path) -> dict[str, Any]:
    """Rewrite study.json / study.md from its run folders as they are now (after `emq verdict --known-bar`)."""
    out_dir = Path(out_dir)
    study = load_study(out_dir)
    runs = [_run_row(out_dir / r["folder"], r["seed"], r["batch_seed"], r["seconds"]) for r in study["runs"]]
    return write_study(out_dir, study["benchmark"], study["command"], runs, study["planned_runs"],
                       study.get("replicate_ceiling"))


def study_runs(path: str | Path) -> dict[str, Path]:
    """Return each run of a study as {seedS-batchB: run folder}; a lone run folder counts as a study of itself."""
    path = Path(path)
    if (path / "study.json").is_file():
        return {r["folder"]: path / r["folder"] for r in load_study(path)["runs"]}
    run = RunFolder(path)
    return {run_folder(Path(), run.search_config().seed, (run.read_hall().get("batch") or {}).get("seed")).name: path}


def load_study(out_dir: str | Path) -> dict[str, Any]:
    """Return a study folder's study.json."""
    path = Path(out_dir) / "study.json"
    return loads_strict(read_text_limited(path, MAX_JSON_BYTES, "study record (study.json)", RunFolderError))
