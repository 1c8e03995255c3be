"""Each study run's best program against the known-proxy library, on the held-out cells the library's chunks cover.

The library's 5,000-cell table is computed in chunks (`results/known_proxies.py --chunk K`,
issue 22); its chunks and the study's runs share the uniform held-out list (split seed 0,
hash order), so on the cells a chunk covers both were scored on the same networks and
batch. This pairs, over those cells, the run's `evolved #1` with each library program
(paired bootstrap of the Kendall difference), from the committed per-candidate files alone.
The choice among library proxies is not made on a search split here: it is a look at where
the study stands, not a verdict (issue 24's campaign makes that choice on the search split).

    python3 results/nas-bench-201/vs_library.py results/nas-bench-201/study-fp_acc-uniform \
        results/known-proxies-nb201 --out results/nas-bench-201/study-vs-library-partial.md

A single run folder (one with `heldout_scores.csv` and no `study.json`) is read as a study of one run;
`--also RUN` adds further run folders as columns. `--search-chunks DIR` (the library's chunk files on the
search split) adds the choice the known bar makes: per run, the best library proxy on its search cells,
compared with the run's best program on the covered held-out cells.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, when run as a script

import numpy as np  # noqa: E402

from results.report import publish, reproduce_line  # noqa: E402
from emq.bench.registry import open_benchmark  # noqa: E402
from emq.fitness import get_metric, kendall, paired_bootstrap_difference, partial_kendall  # noqa: E402
from emq.known_scores import KNOWN_PREFIX, KnownScores  # noqa: E402
from emq.stats.config import StatsConfig  # noqa: E402
from search.known_bar import known_names  # noqa: E402
from search.protocol import choose_known, cut_run  # noqa: E402
from search.run_folder import RunFolder, read_run  # noqa: E402
from search.study import study_runs  # noqa: E402

TARGET = "fp_acc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("chunks", type=Path, help="folder of chunk-KKK.scores.csv files")
    parser.add_argument("--also", type=Path, action="append", default=[], help="a further run folder (repeatable)")
    parser.add_argument("--search-chunks", type=Path, default=None,
                        help="the library's chunk files on the runs' search split: also choose the best library "
                             "proxy there, as the known bar does, and compare with it on the covered cells")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    files = KnownScores.read([args.chunks])
    cells = list(files.rows)
    truth = files.truth_on(cells, TARGET)
    names = [n for n in files.names() if n.startswith(KNOWN_PREFIX)]
    library = {n[len(KNOWN_PREFIX):]: v for n, v in files.values(cells, names).items()}
    flops = files.values(cells, ["flops"])["flops"]
    runs = list(study_runs(args.study).items()) + [(folder.name, folder) for folder in args.also]
    command = f"python3 results/nas-bench-201/vs_library.py {args.study} {args.chunks}" + "".join(
        f" --also {a}" for a in args.also) + (f" --search-chunks {args.search_chunks}" if args.search_chunks else "")
    evolved, n_heldout = {}, 0
    for label, folder in runs:
        table = RunFolder(folder).read_scores()
        where = {c: i for i, c in enumerate(table.candidates)}
        missing = [c for c in cells if c not in where]
        if missing:
            raise SystemExit(f"{folder}: {len(missing)} chunk cells are not among its held-out cells")
        evolved[label] = table.scores["evolved #1"][[where[c] for c in cells]]
        n_heldout = max(n_heldout, len(table.candidates))
    chunk_names = ", ".join(p.name for p in files.sources)
    lines = [f"# The study's winners against the known-proxy library on {len(cells)} held-out cells", "",
             reproduce_line(command, args.out), "",
             f"Cells: those of {chunk_names} ({len(cells)} of the study's {n_heldout:,} "
             f"held-out cells); target `{TARGET}`; batch seed 0 for the library, each run's own batch for its "
             "program. Each cell: Kendall of the run's best program minus the library program's, paired bootstrap "
             "95% CI over the cells (1,000 resamples). AZ-NAS's rank aggregate (`az_nas`) is ranked over these "
             "cells. This first table is not a verdict: no choice on a search split (the last section makes it).",
             "", "| library program | its Kendall | " + " | ".join(
                 label for label, _ in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    lines.append("| (each run's best program) | - | " + " | ".join(
        f"{kendall(s, truth):+.3f}" for s in evolved.values()) + " |")
    ordered = sorted(library.items(), key=lambda kv: -kendall(kv[1], truth))
    for name, scores in ordered:
        cells_text = []
        for s in evolved.values():
            d = paired_bootstrap_difference(s, scores, {TARGET: truth})
            cells_text.append(f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        lines.append(f"| {name} | {kendall(scores, truth):+.3f} | " + " | ".join(cells_text) + " |")
    lines += ["", "## The winners, read against size and the library", "",
              "Kendall of each run's best program with FLOPs (the reference `flops` column) and with each library "
              "program, over the same cells; the partial Kendall of program and truth given FLOPs (what it ranks "
              "beyond size) and of FLOPs and truth given the program (what size adds to it). Kendall's partial tau: "
              "(t_xy - t_xz t_yz) / sqrt((1 - t_xz^2)(1 - t_yz^2)).", "",
              "| | " + " | ".join(label for label, _ in runs) + " |", "|---|" + "---|" * len(runs),
              "| Kendall with FLOPs | " + " | ".join(f"{kendall(s, flops):+.3f}" for s in evolved.values()) + " |",
              "| partial Kendall given FLOPs | " + " | ".join(
                  f"{partial_kendall(s, truth, flops):+.3f}" for s in evolved.values()) + " |",
              "| FLOPs' partial Kendall given the program | " + " | ".join(
                  f"{partial_kendall(flops, truth, s):+.3f}" for s in evolved.values()) + " |"]
    for name, scores in ordered:
        lines.append(f"| Kendall with {name} | " + " | ".join(
            f"{kendall(s, scores):+.3f}" for s in evolved.values()) + " |")
    if args.search_chunks:
        lines += chosen_on_search(runs, evolved, files, cells, truth, args.search_chunks, n_heldout)
    publish(lines, args.out)


def chosen_on_search(runs: list[tuple[str, Path]], evolved: dict[str, np.ndarray], files: KnownScores,
                     cells: list[str], truth: np.ndarray, search_chunks: Path, n_heldout: int) -> list[str]:
    """Return the section that chooses, per run, the best library proxy on its search split (every program and
    reference but the size counts, either direction, as `emq verdict --known-bar all` does) and compares the run's
    best program with it on the covered held-out cells."""
    bench = open_benchmark("nas-bench-201")
    on_search = KnownScores.read([search_chunks])
    names = known_names(["all"], on_search)
    lines = ["", "## Against the library proxy chosen on the search split", "",
             f"Per run: every library program (`known:NAME`) and reference of `{search_chunks}` except the size "
             f"counts ({len(names)} proxies), either direction, ranked on the run's own 1,000 search cells; the best "
             "one is the known bar `emq verdict --known-bar all --known-scores` applies. Its held-out Kendall and "
             + (f"the paired difference are on the {len(cells):,} covered cells only (a look until the held-out "
                f"table has all {n_heldout:,})." if len(cells) < n_heldout else f"the paired difference are on all "
                f"{n_heldout:,} held-out cells: the verdict's computation, for runs on the library's batch seed."), "",
             "| run | chosen on the search split | its search Kendall | its held-out Kendall | best program minus it "
             "[95% paired CI] |", "|---|---|---|---|---|"]
    for label, folder in runs:
        run = read_run(folder)
        config = run.config
        cut = cut_run(bench, [TARGET], config.heldout_fraction, config.split_seed, config.split_order, run.n_search,
                      run.n_heldout)
        choice = choose_known(bench, names, StatsConfig(), cut, get_metric(config.metric), progress=False,
                              files=on_search)[TARGET]
        control = choice.oriented(files.values(cells, [choice.name])[choice.name])
        d = paired_bootstrap_difference(evolved[label], control, {TARGET: truth})
        lines.append(f"| {label} | `{choice.label}` | {choice.search_value:+.3f} | {kendall(control, truth):+.3f} | "
                     f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] |")
    return lines


if __name__ == "__main__":
    main()
