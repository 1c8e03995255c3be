"""Decide whether a proxy program is *separable*: a sum over layers of terms that each read one layer at its bits.

A separable mixed-precision proxy scores configuration c as sum_l t(l, c[l]) (up to a
sign and constant factors), so one table of t(l, b) over layers and bit-widths scores
every configuration, and the best one under a size budget is an exact multiple-choice
knapsack (`emq.apply.knapsack`). A program is separable here when

- its output is a linear combination of `sum_layers` / `mean_layers` / `wmean_layers`
  aggregations with `n_neg`, `n_add`, `n_sub` (`emq.apply.decompose.layer_sum`, outer
  function the identity: `n_log` / `n_sqrt` of a sum is monotone only where the sum
  keeps one sign, a property of the data, not of the program);
- no op below an aggregation reads other layers (the `across_layers` group, e.g.
  `sum_layers_t`), so each term sees its own layer only;
- every statistic it reads is layer-local (`StatInfo.layer_local`: a function of the
  layer's own weight and bits: the `lb_*` table statistics, `bits`, `params`,
  `quant_error`, ...), not of the quantized network around it (`grad`, `act`, ...).

`--separable` searches build only programs `sum_layers(f(lb_*))`, a subset of these.
"""
from __future__ import annotations

from emq.apply.decompose import layer_sum
from emq.proxy import Proxy
from emq.stats import STATS
from primitives import get_op

#: Op groups whose value at one layer depends on other layers (or other candidates).
CROSS_LAYER_GROUPS = ("across_layers", "population")


def why_not_separable(proxy: Proxy) -> str:
    """Return why `proxy` is not separable ("" when it is); see the module docstring for the rule."""
    for _path, node in proxy.root.walk():
        if not node.is_leaf and get_op(node.name).group in CROSS_LAYER_GROUPS:
            return f"op {node.name} reads across layers"
    coupled = sorted(n for n in proxy.stats_needed if not STATS[n].layer_local)
    if coupled:
        return (f"statistic(s) {', '.join(coupled)} depend on the whole quantized network, not on one layer's "
                "bits")
    structure = layer_sum(proxy)
    if structure is None:
        return ("the output is not a linear combination of sum_layers / mean_layers / wmean_layers "
                "(with n_neg, n_add, n_sub)")
    if structure.outer != "identity":
        return f"{structure.outer} of a sum is monotone only where the sum keeps one sign"
    return ""


def is_separable(proxy: Proxy) -> bool:
    """Return whether `proxy` scores a configuration as a sum of per-layer terms of that layer's bits alone."""
    return not why_not_separable(proxy)
