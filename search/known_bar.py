"""Add the second bar to a judged run: its hall of fame against the best known proxy, on its committed scores.

A run judged before the known bar existed (or with fewer baselines) keeps every hall
program's held-out scores in `heldout_scores.csv`. This chooses the best of the named
known proxies on the run's own search split (as the trivial predictor was chosen), scores
the chosen ones on its held-out candidates, and rewrites what the bar changes: each hall
entry's `known_heldout` / `vs_best_known`, the run's verdict and claim, the score table
(the new columns beside the old, so `emq verdict --from-scores` recomputes both bars) and
the summary's verdict line. The programs' own scores are read, never recomputed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from emq.atomic import write_text_atomic
from emq.baselines import is_trivial
from emq.bench.base import Benchmark
from emq.fitness import TrivialChoice, get_metric
from emq.known_scores import DEFAULT_INIT_SEED, KNOWN_PREFIX, KnownScores, read_chunk
from emq.score_table import ScoreTable
from emq.stats.config import StatsConfig
from search.config import RunFolderError
from search.hall_of_fame import json_finite
from search.protocol import against_trivial, choose_known, cut_run, known_values, run_verdict, verdict_line
from search.run_folder import RunFolder, read_run


def add_known_bar(bench: Benchmark, run_dir: str | Path, names: Sequence[str], stats_config: StatsConfig,
                  progress: bool = True, cache_root: str | Path | None = None,
                  scores_from: Sequence[str | Path] = ()) -> dict[str, Any]:
    """Judge `run_dir`'s hall of fame against the best of the known proxies `names`; return the new verdict.

    The known proxies are scored on the run's own batch (seed, size, init seed and
    statistic set as its hall of fame and config record them, whatever `stats_config`
    says of those); `stats_config` gives the rest (storage dtype, device). With
    `scores_from` (folders of known-proxy chunk files, `emq.known_scores`), their
    committed values are read instead, after checking they were computed on that batch;
    there `known:NAME` names a library program and `all` every proxy the files hold.
    """
    folder, run = RunFolder(run_dir), read_run(run_dir)
    if run.benchmark != bench.name:
        raise RunFolderError(f"{folder.path} is a run on {run.benchmark}, not on {bench.name}")
    hall, table = folder.read_hall(), folder.read_scores()
    stats_config = run_stats_config(hall, run.stat_names, stats_config)
    files = known_files(bench, scores_from, stats_config, folder.path) if scores_from else None
    names = known_names(names, files)
    targets = list(run.targets or bench.ground_truth())
    search = run.config
    cut = cut_run(bench, targets, search.heldout_fraction, search.split_seed, search.split_order, run.n_search,
                  run.n_heldout)
    if [c.id for c in cut.heldout] != table.candidates:
        raise RunFolderError(f"{folder.scores_file} lists other candidates than the run's held-out cut; the file "
                             "is not this run's: restore it, or rerun the search")
    metric = get_metric(search.metric)
    known = choose_known(bench, names, stats_config, cut, metric, progress, cache_root, files)
    values = known_values(bench, sorted({c.name for c in known.values()}), stats_config, cut.heldout, progress,
                          cache_root, files)
    joint, n_boot = table.meta["joint"], int(table.meta["n_boot"])
    for entry in hall["programs"]:
        scores = table.scores[f"evolved #{entry['rank']}"]
        entry.update(json_finite(against_trivial(scores, known, values, table.truth, metric, joint, n_boot,
                                                 bar="known")))
    choices = {t: TrivialChoice.from_json(c) for t, c in hall["best_trivial"].items()}
    outcome = json_finite(run_verdict(hall["programs"][0] if hall["programs"] else None, choices, targets, known))
    hall.update(best_known={t: c.to_json() for t, c in known.items()}, verdict=outcome)
    folder.replace_hall(hall)
    columns = {**table.scores, **{f"baseline:{n}": v for n, v in values.items()}}
    folder.write_scores(ScoreTable(table.candidates, table.truth, columns,
                                   {**table.meta, "best_known": hall["best_known"]}))
    _replace_verdict_line(folder.summary, verdict_line(outcome))
    return outcome


def known_names(names: Sequence[str], files: KnownScores | None) -> list[str]:
    """Return the known proxies `names` stand for (`all`: every one `files` hold), without the trivial predictors.

    The known bar is for proxies beyond size: FLOPs, #params and library programs whose
    reference is one (AZ-NAS's complexity term) are left out.
    """
    given = list(names)
    if files is not None and "all" in names:
        names = [n for n in files.names() if n not in names] + [n for n in names if n != "all"]
    names = [n for n in names if not is_trivial(n) and not (files is not None and trivial_program(n))]
    if not names:
        raise RunFolderError(f"--known-bar {', '.join(given) or '(none)'}: name at least one known proxy (a "
                             "baseline that is not a trivial predictor, e.g. nwot, jacov, synflow)")
    if files is None and [n for n in names if n.startswith(KNOWN_PREFIX) or n == "all"]:
        raise RunFolderError(f"--known-bar {', '.join(names)}: `known:NAME` and `all` read committed values; give "
                             "--known-scores FOLDER (the known-proxy chunk files of the run's splits)")
    return names


def known_files(bench: Benchmark, folders: Sequence[str | Path], config: StatsConfig, run: Path) -> KnownScores:
    """Return the known-proxy chunk files of those `folders` computed on the run's batch (a study's runs on two
    batch seeds take all four folders at once), refusing when none is."""
    batch = dict(bench.batch(config.batch_seed, config.batch_size).describe())
    found = {Path(f): folder_batch(Path(f)) for f in folders}
    matching = [f for f, b in found.items() if b == (batch, config.init_seed)] or list(found)[:1]
    files = KnownScores.read(matching)
    if files.benchmark != bench.name:
        raise RunFolderError(f"{', '.join(str(f) for f in folders)}: known-proxy values of {files.benchmark}, but the "
                             f"run {run} is on {bench.name}; give that benchmark's chunk files")
    if files.batch != batch or files.init_seed != config.init_seed:
        raise RunFolderError(f"{', '.join(str(f) for f in folders)}: computed on batch {files.batch} with init seed "
                             f"{files.init_seed}, but the run {run} scored batch {batch} with init seed "
                             f"{config.init_seed}; give chunk files computed on the run's batch")
    return files


def folder_batch(folder: Path) -> tuple[dict[str, Any], int] | None:
    """Return the (batch, init seed) a folder's first chunk file was computed on; None when it has none."""
    paths = sorted(folder.glob("chunk-*.scores.csv"))
    if not paths:
        return None
    meta = read_chunk(paths[0]).meta
    return dict(meta["settings"]["batch"]), int(meta.get("init_seed", DEFAULT_INIT_SEED))


def trivial_program(name: str) -> bool:
    """True for a library program (`known:NAME`) whose reference is a trivial predictor (AZ-NAS's complexity is
    FLOPs): the known bar is for proxies beyond size."""
    from emq.known import get_known

    return name.startswith(KNOWN_PREFIX) and is_trivial(get_known(name[len(KNOWN_PREFIX):]).reference)


def run_stats_config(hall: dict[str, Any], stat_names: Sequence[str] | None, base: StatsConfig) -> StatsConfig:
    """Return `base` with the batch, init seed and statistic set the run recorded (its batch is the one to score on)."""
    batch, found = hall.get("batch") or {}, hall.get("stats") or {}
    return dataclasses.replace(base, batch_seed=int(batch.get("seed", base.batch_seed)),
                               batch_size=int(batch.get("size", base.batch_size)),
                               init_seed=int(found.get("init_seed", base.init_seed)),
                               stat_names=tuple(stat_names) if stat_names else base.stat_names)


def _replace_verdict_line(summary: Path, line: str) -> None:
    """Replace summary.md's closing `Verdict (this run): ...` line (the last one) by `line`."""
    text = summary.read_text(encoding="utf-8") if summary.is_file() else ""
    head, found, tail = text.rpartition("Verdict (this run):")
    if not found:
        write_text_atomic(summary, text.rstrip() + "\n\n" + line + "\n")
        return
    rest = tail.split("\n", 1)[1] if "\n" in tail else ""
    write_text_atomic(summary, head + line + "\n" + rest)
