"""HAWQ-v2 bit allocation (Dong et al., NeurIPS 2020), solved exactly.

HAWQ-v2 scores a configuration by the sum over layers of the full-precision network's
average Hessian trace Tr(H_l)/n_l times the layer's squared quantization error
||Q_b(W_l) - W_l||^2, and picks the configuration that minimises it within the size
budget. Each layer's term depends on its own width only, so the problem is a
multiple-choice knapsack: `emq.apply.knapsack.maximise_within` solves it to proven
optimality (the paper's Pareto-frontier search does the same job). The per-layer
costs come from `emq.baselines.hawq_v2_layer_costs`, the very objective the
registered `hawq_v2` baseline scores candidates with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from torch import nn

from emq.apply.allocation import BitAllocation
from emq.apply.budget import Budget, average_bits, check_budget, size_bits, size_mb
from emq.apply.knapsack import maximise_within
from emq.baselines import HAWQ_V2_SAMPLES, hawq_v2_layer_costs, hawq_v2_traces
from emq.bench.base import Batch
from emq.quant.layers import quantizable_layers

#: How the objective reads in reports.
HAWQ_V2_FORMULA = "-sum_l Tr(H_l)/n_l * ||Q_b(W_l) - W_l||^2 (full-precision Hessian)"


@dataclass
class HawqV2Objective:
    """HAWQ-v2's objective of one network: `costs[l, k]` is layer l's term at width `choices[k]` (to minimise)."""

    layers: list[str]
    params: dict[str, int]
    choices: tuple[int, ...]
    costs: np.ndarray
    traces: dict[str, float]
    samples: int
    seconds: float

    def score(self, bits: Mapping[str, int]) -> float:
        """Return minus the summed costs of configuration `bits` (higher is better, like every objective here)."""
        return -float(sum(self.costs[i, self.choices.index(int(bits[n]))] for i, n in enumerate(self.layers)))

    def warnings(self) -> list[str]:
        """Return a sentence per layer whose estimated trace is not positive: there the objective rewards error."""
        return [f"the estimated average Hessian trace of `{n}` is {t:+.3g} after {self.samples} Hutchinson samples, "
                f"so HAWQ-v2's objective does not penalise quantizing it (a negative trace rewards it)"
                for n, t in self.traces.items() if not t > 0]


def hawq_v2_objective(model: nn.Module, batch: Batch, choices: Sequence[int], seed: int = 0,
                      samples: int = HAWQ_V2_SAMPLES) -> HawqV2Objective:
    """Return HAWQ-v2's per-layer costs for full-precision `model` on `batch` (Hutchinson draws from `seed`)."""
    start = time.perf_counter()
    choices = tuple(sorted(int(b) for b in choices))
    traces = hawq_v2_traces(model, batch, seed, samples)
    table = hawq_v2_layer_costs(model, choices, traces)
    layers = list(quantizable_layers(model))
    params = {n: int(m.weight.numel()) for n, m in quantizable_layers(model).items()}
    costs = np.array([[table[n][b] for b in choices] for n in layers], dtype=np.float64)
    return HawqV2Objective(layers, params, choices, costs, traces, samples, time.perf_counter() - start)


def allocate_hawq_v2(objective: HawqV2Objective, budget: Budget) -> BitAllocation:
    """Return the configuration minimising HAWQ-v2's objective within `budget` (never above it; proven optimal)."""
    start = time.perf_counter()
    cap = check_budget(budget, objective.params, objective.choices)
    widths, optimal = maximise_within(-objective.costs, [objective.params[n] for n in objective.layers],
                                      objective.choices, cap)
    bits = dict(zip(objective.layers, widths))
    assert size_bits(bits, objective.params) <= cap, "allocation exceeds the budget"
    return BitAllocation(
        bits=bits, method="milp", score=objective.score(bits), size_bits=size_bits(bits, objective.params),
        size_mb=size_mb(bits, objective.params), average_bits=average_bits(bits, objective.params),
        budget=budget.describe(), cap_bits=cap, optimal=optimal, evaluations=int(objective.costs.size),
        seconds=time.perf_counter() - start, proxy=HAWQ_V2_FORMULA)
