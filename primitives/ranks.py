"""Rank aggregation (N -> N over the candidate set): join network scores by their ranks, as AZ-NAS does.

AZ-NAS (Lee & Ham, CVPR 2024) adds, over its proxies m, log(rank_m(i) / N), where
rank_m(i) is candidate i's rank (1 = lowest score, N = highest) among the N candidates
scored together. Such a value is not a function of one network: it depends on the
other candidates. These ops therefore take the 1-d vector of the scores of every
candidate scored together (`fn(values)`, shape rule "population") and the evaluator
computes them after every block and shard has been scored (`emq.population`); a network
scored alone has no rank and is refused there.

Ties share their average rank; NaN (a failed candidate) stays NaN and is left out of N;
-inf and +inf rank at the ends. A 0-d input is one candidate (rank 1 of 1, log 0).
Inputs are never modified.
"""
from __future__ import annotations

import torch

from primitives.registry import register
from primitives.types import Kind

N = Kind.N


def log_rank(values: torch.Tensor) -> torch.Tensor:
    """Return log(rank / N) of every entry among the non-NaN entries (average rank for ties; NaN stays NaN)."""
    flat = values.reshape(-1)
    valid = ~torch.isnan(flat)
    ordered = torch.sort(flat[valid]).values
    below = torch.searchsorted(ordered, flat, right=False).to(torch.float64)
    up_to = torch.searchsorted(ordered, flat, right=True).to(torch.float64)
    rank = (below + 1 + up_to) / 2
    count = torch.clamp(valid.sum(), min=1).to(torch.float64)
    out = torch.log(rank / count)
    return torch.where(valid, out, torch.full_like(out, float("nan"))).to(values.dtype).reshape(values.shape)


@register("n_rank_log", (N,), N, "population", shape_rule="population")
def n_rank_log(values: torch.Tensor) -> torch.Tensor:
    """Return log(rank / N) of each candidate's score among the candidates scored together (AZ-NAS's term)."""
    return log_rank(values)


@register("n_rank_add", (N, N), N, "population", commutative=True, shape_rule="population")
def n_rank_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return log(rank_a / N) + log(rank_b / N): two scores joined by their ranks among the candidates (AZ-NAS)."""
    return log_rank(a) + log_rank(b)
