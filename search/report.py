"""What a search run leaves for people: the fitness/niche plot, a scatter of the best proxy, summary.md."""
from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emq.atomic import write_atomic, write_text_atomic


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed; plots are skipped (pip install matplotlib)", stacklevel=3)
        return None
    return plt


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def plot_evolution(log: Sequence[dict[str, Any]], path: str | Path, metric: str = "kendall") -> Path | None:
    """Write best / median / best-ever fitness and the number of niches per generation; return the path."""
    plt = _pyplot()
    if plt is None or not log:
        return None
    gens = [row["gen"] for row in log]

    def col(name: str) -> list[float]:
        return [math.nan if row.get(name) is None else row[name] for row in log]

    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(gens, col("best"), label="best in population", color="C0", lw=3, alpha=0.5)
    ax.plot(gens, col("best_ever"), label="best so far (hall of fame)", color="C3", lw=1.2)
    ax.plot(gens, col("median"), label="median in population", color="C0", ls="--")
    ax.set_xlabel("generation")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"fitness ({metric}, search split)")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(gens, col("niches"), color="C2", ls=":", marker=".", label="niches")
    twin.set_ylabel("distinct niches", color="C2")
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
    ax.set_title("evolution of proxy programs")
    return _save(fig, Path(path))


def plot_scatter(scores: np.ndarray, truth: np.ndarray, path: str | Path, title: str, xlabel: str = "proxy score",
                 ylabel: str = "ground truth") -> Path | None:
    """Write a scatter of proxy scores against ground truth; return the path."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    keep = np.isfinite(scores) & np.isfinite(truth)
    ax.scatter(np.asarray(scores)[keep], np.asarray(truth)[keep], s=10, alpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.fill(part, 70) for part in title.split("\n")), fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def write_summary(path: str | Path, title: str, command: str | None, table: str, hall: Sequence[dict[str, Any]],
                  log: Sequence[dict[str, Any]], extra: Sequence[str] = (), verdict: str = "") -> Path:
    """Write summary.md: the command, the held-out comparison table, the hall of fame, the search's course, the verdict."""
    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by:", "", f"    {command}", ""]
    lines += list(extra)
    if table:
        lines += ["## Held-out comparison", "", table.rstrip(), ""]
    lines += ["## Hall of fame (search split)", "", "| rank | fitness | formula |", "|---|---|---|"]
    for entry in hall:
        lines.append(f"| {entry['rank']} | {entry['fitness']:+.4f} | `{entry['formula']}` |")
    if log:
        last = log[-1]
        total = sum(row["evaluations"] for row in log)
        rejections: dict[str, int] = {}
        for row in log:
            for reason, n in row["rejections"].items():
                rejections[reason] = rejections.get(reason, 0) + n
        lines += ["", "## Search", "",
                  f"{len(log)} generations, {total} programs evaluated, {last['niches']} niches in the last population.",
                  *_shared_line(last),
                  "", "Rejections by reason: " + (", ".join(f"{k} {v}" for k, v in
                                                           sorted(rejections.items(), key=lambda kv: -kv[1])) or "none"),
                  "", "Files: `log.jsonl` (one line per generation), `hall_of_fame.json`, `evolution.png`, "
                  "`scatter.png`, `config.json`, `checkpoint/`."]
    if verdict:
        lines += ["", "## Verdict", "", verdict]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def _shared_line(row: dict[str, Any]) -> list[str]:
    """Return the summary's line on the last population's common subexpressions (none for a log without them)."""
    top = row.get("top_subexpression")
    if not top or top["programs"] < 2:
        return []
    return ["", f"{row['shared_subexpressions']} subexpressions are shared by two or more programs of the last "
                f"population; the most common, `{top['formula']}`, by {top['programs']}."]
