"""Reuse of exported proxies: per-layer bit allocation under a size budget, ViT search under a parameter budget.

- `emq.apply.bits`: `Budget`, `BitObjective`, `allocate` (exact MILP
  for layer-separable proxies, else a seeded GA), always within the budget;
- `emq.apply.arch`: arch spaces (`autoformer`, `pit`, `vit-digits`), `ArchObjective`,
  `search_arch` (seeded GA under a parameter budget);
- `emq.apply.mq` / `emq.apply.vit`: the comparisons on the embedded benchmarks, by real
  PTQ accuracy (mq-digits) and by training with the benchmark's recipe (vit-digits);
- `emq.apply.requests`: what `emq apply mq` / `emq apply vit` ask for (`BitRequest`,
  `ArchRequest`) and the one call each makes (`apply_bits`, `apply_arch`);
- `emq.apply.decompose`: recognising proxies that are sums of per-layer terms;
- `emq.apply.evolve`: the small seeded genetic algorithm both searches share (on `emq.ga`).
"""
from __future__ import annotations

from emq.apply.arch import ArchObjective, ArchSearchResult, get_space, search_arch
from emq.apply.bits import BitAllocation, BitObjective, Budget, allocate

__all__ = ["ArchObjective", "ArchSearchResult", "BitAllocation", "BitObjective", "Budget", "allocate",
           "get_space", "search_arch"]
