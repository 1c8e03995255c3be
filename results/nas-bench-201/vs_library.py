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
`--also RUN` adds further run folders as columns.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, when run as a script

from results.report import publish, reproduce_line  # noqa: E402
from emq.fitness import kendall, paired_bootstrap_difference  # noqa: E402
from emq.score_table import ScoreTable  # noqa: E402
from search.run_folder import RunFolder  # noqa: E402
from search.study import study_runs  # noqa: E402

TARGET = "fp_acc"


def library_columns(chunks: list[ScoreTable]) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Return the chunks' cells, their truth and each library program's scores, concatenated in chunk order.

    Rank aggregates (AZ-NAS, kept as `part:` columns) are left out: their score is a rank over the cells assembled.
    """
    names = [n for n in chunks[0].scores if n.startswith("program:")]
    cells = [c for t in chunks for c in t.candidates]
    truth = np.concatenate([t.truth[TARGET] for t in chunks])
    return cells, truth, {n.split(":", 1)[1]: np.concatenate([t.scores[n] for t in chunks]) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("chunks", type=Path, help="folder of chunk-KKK.scores.csv files")
    parser.add_argument("--also", type=Path, action="append", default=[], help="a further run folder (repeatable)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    files = sorted(args.chunks.glob("chunk-*.scores.csv"))
    if not files:
        raise SystemExit(f"{args.chunks}: no chunk-*.scores.csv files")
    cells, truth, library = library_columns([ScoreTable.read(f) for f in files])
    runs = list(study_runs(args.study).items()) + [(folder.name, folder) for folder in args.also]
    command = f"python3 results/nas-bench-201/vs_library.py {args.study} {args.chunks}" + "".join(
        f" --also {a}" for a in args.also)
    lines = [f"# The study's winners against the known-proxy library on {len(cells)} held-out cells", "",
             reproduce_line(command, args.out), "",
             f"Cells: those of {', '.join(f.name for f in files)} ({len(cells)} of the study's 5,000 "
             f"held-out cells); target `{TARGET}`; batch seed 0 for the library, each run's own batch for its "
             "program. Each cell: Kendall of the run's best program minus the library program's, paired bootstrap "
             "95% CI over the cells (1,000 resamples). Not a verdict: no choice on a search split (see the script).",
             "", "| library program | its Kendall | " + " | ".join(
                 label for label, _ in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    evolved = {}
    for label, folder in runs:
        table = RunFolder(folder).read_scores()
        where = {c: i for i, c in enumerate(table.candidates)}
        missing = [c for c in cells if c not in where]
        if missing:
            raise SystemExit(f"{folder}: {len(missing)} chunk cells are not among its held-out cells")
        evolved[label] = table.scores["evolved #1"][[where[c] for c in cells]]
    lines.append("| (each run's best program) | - | " + " | ".join(
        f"{kendall(s, truth):+.3f}" for s in evolved.values()) + " |")
    for name, scores in sorted(library.items(), key=lambda kv: -kendall(kv[1], truth)):
        cells_text = []
        for s in evolved.values():
            d = paired_bootstrap_difference(s, scores, {TARGET: truth})
            cells_text.append(f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]")
        lines.append(f"| {name} | {kendall(scores, truth):+.3f} | " + " | ".join(cells_text) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
