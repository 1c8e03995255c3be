"""Best search fitness against programs evaluated, for each labelled study (evolution vs random search, issue 23).

Reads every run's `log.jsonl` (one line per generation: `evaluations` that generation,
`best_ever` so far) of each study folder, and writes a plot (each run a thin line, the
median over runs thick) and a table of the median best fitness at fixed budgets.

    python3 benchmarks/search_curve.py evolution=results/mq-separable/study-10k \
        random=results/mq-separable/random-10k --runs '*-batch0' --out results/mq-separable/search-curve
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, when run as a script

from emq.atomic import write_text_atomic  # noqa: E402

#: Budgets (programs evaluated) at which the table reads each curve.
BUDGETS = (128, 256, 512, 1000, 2500, 5000, 7000, 10000)


def run_curve(log: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (cumulative programs evaluated, best search fitness so far) after each generation of one run."""
    rows = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return (np.cumsum([r["evaluations"] for r in rows]), np.array([r["best_ever"] for r in rows], dtype=float))


def best_at(curve: tuple[np.ndarray, np.ndarray], budget: int) -> float:
    """Return the best fitness a run had reached within `budget` evaluated programs (NaN: none yet, or past its end)."""
    done, best = curve
    if budget > done[-1]:
        return float("nan")
    within = np.nonzero(done <= budget)[0]
    return float(best[within[-1]]) if within.size else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="LABEL=STUDY_FOLDER")
    parser.add_argument("--out", type=Path, required=True, help="path without suffix: writes .png and .md")
    parser.add_argument("--runs", default="*", help="run folders to read in each study, e.g. '*-batch0' (default: all)")
    args = parser.parse_args()
    curves: dict[str, list[tuple[str, tuple[np.ndarray, np.ndarray]]]] = {}
    for item in args.studies:
        label, _, folder = item.partition("=")
        logs = sorted(Path(folder).glob(f"{args.runs}/log.jsonl"))
        if not label or not logs:
            raise SystemExit(f"{item}: expected LABEL=STUDY_FOLDER holding run folders with log.jsonl")
        curves[label] = [(log.parent.name, run_curve(log)) for log in logs]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, runs) in enumerate(curves.items()):
        color = f"C{i}"
        for _, (done, best) in runs:
            ax.step(done, best, where="post", color=color, alpha=0.25, linewidth=0.8)
        grid = np.unique(np.concatenate([done for _, (done, _) in runs]))
        median = [np.nanmedian([best_at(c, int(x)) for _, c in runs]) for x in grid]
        ax.step(grid, median, where="post", color=color, linewidth=2, label=f"{label} (median of {len(runs)} runs)")
    ax.set_xscale("log")
    ax.set_xlabel("programs evaluated")
    ax.set_ylabel("best search fitness so far")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)

    header = "| budget (programs evaluated) | " + " | ".join(curves) + " |"
    lines = ["# Best search fitness against programs evaluated", "",
             "Reproduce: `python3 benchmarks/search_curve.py " + " ".join(args.studies)
             + (f" --runs '{args.runs}'" if args.runs != "*" else "") + f" --out {args.out}`", "",
             "Median over each study's runs of the best search-split fitness reached within the budget "
             "(runs that had not reached the budget yet, or ended before it, are left out; n/a: none left).", "",
             f"![curve]({args.out.with_suffix('.png').name})", "", header,
             "|---|" + "---|" * len(curves)]
    for budget in BUDGETS:
        cells = []
        for runs in curves.values():
            values = [best_at(c, budget) for _, c in runs]
            finite = [v for v in values if np.isfinite(v)]
            cells.append(f"{np.median(finite):+.3f} ({len(finite)})" if finite else "n/a")
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
