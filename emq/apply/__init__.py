"""Reuse of exported proxies: per-layer bit allocation under a size budget, ViT search under a parameter budget.

- `emq.apply.budget`: `Budget` (MB or average bits) and the sizes of configurations;
- `emq.apply.bits`: `BitObjective`, a proxy as a function of per-layer bit-widths;
- `emq.apply.allocation`: `allocate` (exact MILP for layer-separable proxies,
  `emq.apply.knapsack`, else a seeded GA), always within the budget;
- `emq.apply.arch`: arch spaces (`autoformer`, `pit`, `vit-digits`), `ArchObjective`,
  `search_arch` (seeded GA under a parameter budget);
- `emq.apply.mq` / `emq.apply.vit`: the comparisons on the embedded benchmarks, by real
  PTQ accuracy (mq-digits) and by training with the benchmark's recipe (vit-digits);
- `emq.apply.requests`: what `emq apply mq` / `emq apply vit` ask for (`BitRequest`,
  `ArchRequest`) and the one call each makes (`apply_bits`, `apply_arch`);
- `emq.apply.decompose`: recognising proxies that are sums of per-layer terms;
- `emq.apply.evolve`: the small seeded genetic algorithm of both apply searches (on DEAP and `emq.ga`).
"""
from __future__ import annotations

from emq.apply.arch import ArchObjective, ArchSearchResult, get_space, search_arch
from emq.apply.allocation import BitAllocation, allocate
from emq.apply.bits import BitObjective
from emq.apply.budget import Budget

__all__ = ["ArchObjective", "ArchSearchResult", "BitAllocation", "BitObjective", "Budget", "allocate",
           "get_space", "search_arch"]
