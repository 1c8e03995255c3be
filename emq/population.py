"""Programs with rank aggregation (population ops, `primitives.ranks`): split them, score the parts, join the ranks.

A population op's value for one candidate depends on the scores of every candidate
scored together, so it cannot be computed block by block, piece by piece or shard by
shard like the rest of a program. Such a program is split instead:

- its *stage*: the network nodes that are population ops or lie above one;
- its *parts*: the network subprograms (kind N, no population op) that feed the stage.

Every part is an ordinary program, scored by the one evaluator wherever the candidates
are (one stack, streamed pieces, pool shards); once every candidate's part scores are
known, the stage is computed on the whole score vectors (`join_scores`). A program's
scores are therefore those of the candidate set handed to the scorer: the search split
for fitness, the held-out split for the verdict, `emq score`'s split, exactly as the
fitness itself is a property of that set. A network scored alone has no rank:
`Proxy.evaluate` refuses such a program with one line (`PopulationProgramError`) rather
than return log(1 / 1) = 0.

A candidate that fails in a part fails in the whole, with that part's reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from emq.errors import EMQUserError
from emq.program import Node
from primitives import Kind, get_op


class PopulationProgramError(EMQUserError, ValueError):
    """A program that ranks candidates among each other, asked for a value of one network (or a per-layer fit)."""


@dataclass(frozen=True)
class PopulationSplit:
    """A program's population stage (network nodes at or above a population op, children first) and its parts."""

    root: Node
    parts: tuple[Node, ...]
    stage: tuple[Node, ...]


def population_ops(root: Node) -> list[str]:
    """Return the names of the population ops a program uses (none: it scores each network on its own)."""
    return sorted({n.name for n in root.unique() if not n.is_leaf and get_op(n.name).is_population})


def refuse_population(root: Node, what: str) -> None:
    """Raise PopulationProgramError (one line) if the program ranks candidates among each other; `what`: the refused use."""
    ops = population_ops(root)
    if ops:
        raise PopulationProgramError(
            f"{root.formula()} ranks each network among the candidates scored together ({', '.join(ops)}), so {what} "
            "has no value: score it over a candidate set (emq score, a search split)")


def split_population(root: Node) -> PopulationSplit | None:
    """Return the program's stage and parts, or None when it has no population op."""
    nodes = root.unique()  # children first
    stage: dict[Node, None] = {}
    for node in nodes:
        if node.is_leaf or node.kind != Kind.N:
            continue
        if get_op(node.name).is_population or any(c in stage for c in node.children):
            stage[node] = None
    if not stage:
        return None
    parts: dict[Node, None] = {}
    for node in stage:
        for child in node.children:
            if child not in stage:
                parts[child] = None
    return PopulationSplit(root, tuple(parts), tuple(stage))


def join_scores(split: PopulationSplit, part_scores: Sequence[np.ndarray]) -> np.ndarray:
    """Return the program's scores from its parts' scores over the same candidates (float64; NaN where a part failed)."""
    values: dict[Node, torch.Tensor] = {
        part: torch.as_tensor(np.asarray(scores, dtype=np.float64)) for part, scores in zip(split.parts, part_scores)}
    for node in split.stage:
        values[node] = get_op(node.name).fn(*[values[c] for c in node.children])
    return values[split.root].to(torch.float64).numpy().copy()


def join_reasons(part_reasons: Sequence[Sequence[str | None]]) -> list[str | None]:
    """Return each candidate's failure reason: the first part's that failed on it (None: no part failed)."""
    n = len(part_reasons[0]) if part_reasons else 0
    return [next((reasons[i] for reasons in part_reasons if reasons[i] is not None), None) for i in range(n)]


def join_failures(part_failures: Sequence[Counter], scores: np.ndarray) -> Counter:
    """Return failure counts from the parts' counts alone (shards report counts, not candidates).

    A candidate failing in two parts would be counted twice by a sum, so each reason
    counts as often as in the part where it is most frequent (a lower bound); scores
    that are non-finite beyond those count as `nonfinite`.
    """
    out: Counter = Counter()
    for failures in part_failures:
        for reason, count in failures.items():
            if reason != "nonfinite":
                out[reason] = max(out[reason], count)
    out["nonfinite"] = max(0, int(np.sum(~np.isfinite(scores))) - sum(out.values()))
    return +out


def part_program(program: Any, node: Node) -> Any:
    """Return part `node` in the form of `program`: a Node, or a proxy of the same class with its meta and layer weights."""
    if isinstance(program, Node):
        return node
    return type(program)(node, program.meta, layer_weights=program.layer_weights)


@dataclass
class Expansion:
    """Programs as the flat list of ordinary programs a scorer runs: each program itself, or its parts."""

    programs: list[Any]
    splits: list[PopulationSplit | None]
    parts: list[Any]
    where: list[list[int]]  # per program: its positions in `parts`

    @classmethod
    def of(cls, programs: Sequence[Any]) -> "Expansion":
        splits, parts, where = [], [], []
        for program in programs:
            root = program if isinstance(program, Node) else program.root
            split = split_population(root)
            pieces = [program] if split is None else [part_program(program, p) for p in split.parts]
            splits.append(split)
            where.append(list(range(len(parts), len(parts) + len(pieces))))
            parts.extend(pieces)
        return cls(list(programs), splits, parts, where)

    @property
    def trivial(self) -> bool:
        """True when no program has a population op (the parts are the programs)."""
        return all(s is None for s in self.splits)

    def assemble(self, results: Sequence[tuple[np.ndarray, Counter]]) -> list[tuple[np.ndarray, Counter]]:
        """Return each program's (scores, failure counts) from its parts' (scores, failure counts)."""
        out = []
        for split, where in zip(self.splits, self.where):
            if split is None:
                out.append(results[where[0]])
                continue
            scores = join_scores(split, [results[i][0] for i in where])
            out.append((scores, join_failures([results[i][1] for i in where], scores)))
        return out
