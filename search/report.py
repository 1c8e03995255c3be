"""What a search run leaves for people: the fitness/niche plot, a scatter of the best proxy, the hall of fame's
program graphs, summary.md."""
from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from emq.atomic import write_atomic, write_text_atomic
from emq.proxy import Proxy

if TYPE_CHECKING:
    import networkx as nx

#: The best hall-of-fame programs drawn in hall_of_fame.png (all of them are in hall_of_fame.json).
MAX_DRAWN = 6
#: Box colour of a node by the type of its value: per-layer tensor, per-layer scalar, network score.
TYPE_COLOURS = {"T": "#cfe2f3", "S": "#fce5cd", "N": "#d9ead3"}


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


def plot_hall_of_fame(hall: Sequence[dict[str, Any]], path: str | Path, most: int = MAX_DRAWN) -> Path | None:
    """Write the graphs of the best `most` hall-of-fame programs, one panel each; return the path (None: nothing drawn).

    Each panel is `Proxy.to_networkx` in layers (`layered_positions`): the score on top,
    arrows from arguments up to the op that reads them, a common subexpression drawn once
    with several arrows out.
    """
    plt = _pyplot()
    entries = list(hall)[:most]
    if plt is None or not entries:
        return None
    from matplotlib.patches import Patch

    graphs = [Proxy.from_formula(entry["formula"]).to_networkx() for entry in entries]
    layers = max(len({y for _, y in layered_positions(g).values()}) for g in graphs)
    cols = min(3, len(entries))
    rows = -(-len(entries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, (1.6 + 0.55 * layers) * rows), squeeze=False)
    for ax, entry, graph in zip(axes.flat, entries, graphs):
        title = f"#{entry['rank']}  fitness {entry['fitness']:+.3f}\n{textwrap.fill(entry['formula'], 56)}"
        _draw_program(ax, graph, title)
    for ax in axes.flat[len(entries):]:
        ax.axis("off")
    handles = [Patch(facecolor=TYPE_COLOURS[t], edgecolor="0.4", label=label) for t, label in
               (("T", "per-layer tensor"), ("S", "per-layer scalar"), ("N", "network score"))]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("hall of fame: programs as graphs (a shared subexpression is drawn once)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return _save(fig, Path(path))


def layered_positions(graph: "nx.DiGraph") -> dict[str, tuple[float, float]]:
    """Return (x, y) of every node of a `Proxy.to_networkx` graph: the root on top, arguments in the layers below.

    y is minus the longest path from the node up to the root, so every arrow points up and
    a program without shared subexpressions draws as its formula's tree. x: statistics take
    consecutive places in the order the formula reads them, an op sits centred over its
    arguments (a shared one under its first reader), and nodes of one layer stay at least
    1 apart. The picture is a function of the graph alone.
    """
    import networkx as nx

    root = graph.graph["root"]
    depth = {root: 0}
    for node in reversed(list(nx.topological_sort(graph))):  # readers before their arguments
        if node != root:
            depth[node] = max(depth[reader] + 1 for reader in graph.successors(node))
    x: dict[str, float] = {}

    def place(node: str) -> None:
        if node in x:
            return
        args = [a for a, _, ps in sorted(graph.in_edges(node, data="positions"), key=lambda e: min(e[2]))]
        for arg in args:
            place(arg)
        x[node] = float(np.mean([x[a] for a in args])) if args else float(sum(1 for n in x if not graph.in_degree(n)))

    place(root)  # recursion depth is bounded by the program's depth (emq.program.MAX_DEPTH)
    for level in set(depth.values()):
        previous = -math.inf
        for node in sorted((n for n in depth if depth[n] == level), key=lambda n: (x[n], n)):
            x[node] = previous = max(x[node], previous + 1.0)
    return {node: (x[node], -float(depth[node])) for node in graph}


def _draw_program(ax: Any, graph: "nx.DiGraph", title: str) -> None:
    import networkx as nx
    from primitives import get_op

    pos = layered_positions(graph)
    nx.draw_networkx_edges(graph, pos, ax=ax, node_size=0, arrowsize=9, edge_color="0.45",
                           min_source_margin=7, min_target_margin=9)
    for kind, colour in TYPE_COLOURS.items():
        labels = {n: name for n, name in graph.nodes(data="name") if graph.nodes[n]["type"] == kind}
        nx.draw_networkx_labels(graph, pos, labels, ax=ax, font_size=7,
                                bbox={"boxstyle": "round,pad=0.3", "fc": colour, "ec": "0.4"})
    # Argument order matters only for non-commutative ops of several arguments (sub, div, ...): say it there.
    ordered = {n for n, name in graph.nodes(data="name") if graph.nodes[n]["kind"] == "op"
               and get_op(name).arity > 1 and not get_op(name).commutative}
    order = {(a, b): ",".join(map(str, ps)) for a, b, ps in graph.edges(data="positions") if b in ordered}
    if order:
        nx.draw_networkx_edge_labels(graph, pos, order, ax=ax, font_size=6, label_pos=0.3, rotate=False,
                                     bbox={"fc": "white", "ec": "none", "pad": 0.5})
    ax.set_title(title, fontsize=7)
    ax.margins(0.12)
    ax.axis("off")


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
    if hall and (Path(path).parent / "hall_of_fame.png").is_file():
        lines += ["", f"The best {min(len(hall), MAX_DRAWN)} as graphs: [hall_of_fame.png](hall_of_fame.png)", "",
                  "![hall of fame programs as graphs](hall_of_fame.png)"]
    if log:
        last = log[-1]
        total = sum(row["evaluations"] for row in log)
        rejections: dict[str, int] = {}
        for row in log:
            for reason, n in row["rejections"].items():
                rejections[reason] = rejections.get(reason, 0) + n
        lines += ["", "## Search", "",
                  f"{len(log)} generations, {total} programs evaluated, {last['niches']} niches in the last population.",
                  *_cost_line(log),
                  *_shared_line(last),
                  "", "Rejections by reason: " + (", ".join(f"{k} {v}" for k, v in
                                                           sorted(rejections.items(), key=lambda kv: -kv[1])) or "none"),
                  "", "Files: `log.jsonl` (one line per generation), `hall_of_fame.json`, `evolution.png`, "
                  "`scatter.png`, `hall_of_fame.png`, `config.json`, `checkpoint/`."]
    if verdict:
        lines += ["", "## Verdict", "", verdict]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def _cost_line(log: Sequence[dict[str, Any]]) -> list[str]:
    """Return the summary's line on the work saved: equivalence-cache hits and programs stopped at the hurdle."""
    twins = sum(row.get("equivalent_hits", 0) for row in log)
    text = f"{twins} programs shared the record of a functionally equivalent one (equivalence cache)"
    if any("hurdle" in row for row in log):
        stopped = sum(row["hurdle"]["stopped"] for row in log if "hurdle" in row)
        passed = sum(row["hurdle"]["passed"] for row in log if "hurdle" in row)
        text += f"; at the hurdle, {stopped} stopped and {passed} went on to the whole search split"
    return ["", text + "."]


def _shared_line(row: dict[str, Any]) -> list[str]:
    """Return the summary's line on the last population's common subexpressions (none for a log without them)."""
    top = row.get("top_subexpression")
    if not top:
        return []
    return ["", f"{row['shared_subexpressions']} subexpressions are shared by two or more programs of the last "
                f"population; the most common, `{top['formula']}`, by {top['programs']}."]
