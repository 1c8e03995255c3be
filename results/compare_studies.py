"""Pair two studies run for run: held-out Kendall of study A's best program minus study B's, paired bootstrap CI.

For the random-search control (issue 23): evolution and random search at the same budget,
same search seeds, same batch seed, hence the same held-out candidates; each pair is
bootstrapped over those candidates from the committed `heldout_scores.csv` files alone.

    python3 results/compare_studies.py results/mq-separable/study-10k results/mq-separable/random-10k \
        --out results/mq-separable/evolution-vs-random.md

A single run folder (no `study.json`; e.g. a `--seeds 0 --batch-seeds 0` run) counts as a study of that one run,
named `seedS-batchB` from its own records.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, when run as a script

from results.report import publish, reproduce_line  # noqa: E402
from emq.fitness import kendall, paired_bootstrap_difference  # noqa: E402
from search.run_folder import RunFolder  # noqa: E402
from search.study import study_runs  # noqa: E402


def paired_rows(study_a: Path, study_b: Path) -> list[dict]:
    """Return one row per run folder the two studies share: both Kendalls and the paired difference."""
    runs_a, runs_b = study_runs(study_a), study_runs(study_b)
    rows = []
    for name, folder_a in runs_a.items():
        if name not in runs_b:
            continue
        a, b = RunFolder(folder_a).read_scores(), RunFolder(runs_b[name]).read_scores()
        if a.candidates != b.candidates:
            raise SystemExit(f"{name}: the two runs were judged on different held-out candidates")
        score_a, score_b = a.scores["evolved #1"], b.scores["evolved #1"]
        diff = paired_bootstrap_difference(score_a, score_b, a.truth)
        rows.append({"folder": name, "a": statistics.mean(kendall(score_a, t) for t in a.truth.values()),
                     "b": statistics.mean(kendall(score_b, t) for t in b.truth.values()), "diff": diff})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_a", type=Path)
    parser.add_argument("study_b", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = paired_rows(args.study_a, args.study_b)
    if not rows:
        raise SystemExit("the two studies share no run folder (seedS-batchB)")
    lines = [f"# `{args.study_a}` against `{args.study_b}`, run for run", "",
             reproduce_line(f"python3 results/compare_studies.py {args.study_a} {args.study_b}", args.out),
             "",
             "Held-out Kendall of each run's best program (chosen on the search split); the difference A - B is "
             "paired-bootstrapped over the shared held-out candidates (1000 resamples).", "",
             "| run | A | B | A - B [95% CI] |", "|---|---|---|---|"]
    for r in rows:
        d = r["diff"]
        lines.append(f"| {r['folder']} | {r['a']:+.3f} | {r['b']:+.3f} | "
                     f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] |")
    lows, highs = [r["diff"].low for r in rows], [r["diff"].high for r in rows]
    above, below = sum(low > 0 for low in lows), sum(high < 0 for high in highs)
    lines += ["", f"Runs where A is above B (interval above 0): {above} of {len(rows)}; below: {below}; "
              f"median difference {float(np.median([r['diff'].value for r in rows])):+.3f}."]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
