"""A proxy as a function of one network's per-layer weight bit-widths: the statistics model of a configuration.

How a configuration is scored (`BitObjective`). A proxy reads per-layer statistics.
Those of a layer split into

- *local* statistics (`weight`, `params`, `flops`, `bits`, `quant_weight`,
  `quant_error`): they depend on the layer's own bit-width only, and
- *network* statistics (`grad`, `act`, `act_grad`, `hessian_diag`,
  `virtual_grad`, ...): they depend on every layer's bit-width through the
  quantized network they are measured on.

The default *separable* model measures each layer's statistics once per bit choice
b: with every layer at the reference width (the largest choice) except that layer
at b (1 + layers x (choices - 1) statistics passes; `choices` passes when the proxy
reads local statistics only). A configuration's statistics are then put together
layer by layer, so scoring one costs a proxy evaluation (milliseconds). For a proxy
of local statistics this is exact; for network statistics it is a first-order
approximation (each layer sees the others at the reference width), the usual one
of sensitivity-based allocation (HAWQ measures sensitivities once, too).
`exact=True` instead measures every scored configuration's own quantized network
(one statistics pass each; genetic algorithm only).

The per-(layer, bits) statistics `lb_*` (`emq.stats.layer_bits`) come from the table
given as `layer_bits`: each is already one layer quantized alone at each width, so
a configuration's values are exact in either mode and cost no pass.

The size budget is `emq.apply.budget`; finding the best configuration under it,
`emq.apply.allocation`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from emq.apply.budget import Bits
from emq.apply.decompose import LayerSum, apply_outer, layer_sum, layer_weights, sub_program
from emq.errors import StatUnavailableError
from emq.proxy import Proxy, ProxyEvaluationError
from emq.quant.layers import quantizable_layers
from emq.stats import NetworkStats, stats_with
from emq.stats.catalogue import LAYER_BITS_STATS
from emq.stats.compute import applicable_stats, compute_stats
from emq.stats.layer_bits import LayerBitsTable

#: The weight bit-widths of the embedded MQ benchmark.
DEFAULT_CHOICES: tuple[int, ...] = (2, 3, 4, 8)
#: Statistics of a layer that depend on its own bit-width only (or on none).
LOCAL_STATS = stats_with(layer_local=True)


@dataclass
class Separable:
    """The proxy as `direction * sum_l coef[l, k_l]` (to maximise) for choice indices k_l; `score` maps the sum back."""

    coef: np.ndarray  # (layers, choices); NaN: a choice the proxy cannot score
    direction: float
    structure: LayerSum

    def value(self, ks: Sequence[int]) -> float:
        return float(sum(self.coef[i, k] for i, k in enumerate(ks)))

    def score(self, ks: Sequence[int]) -> float:
        return apply_outer(self.structure, self.value(ks))


class BitObjective:
    """A proxy as a function of one network's per-layer weight bit-widths (see the module docstring)."""

    def __init__(
        self,
        proxy: Proxy,
        model: nn.Module,
        batch: Any,
        *,
        choices: Sequence[int] = DEFAULT_CHOICES,
        act_bits: int | None = 8,
        calib_inputs: torch.Tensor | None = None,
        exact: bool = False,
        hessian_samples: int = 2,
        seed: int = 0,
        device: torch.device | str = "cpu",
        store_dtype: torch.dtype = torch.float32,
        progress: Callable[[int, int], None] | None = None,
        layer_bits: LayerBitsTable | None = None,
    ) -> None:
        check_stats(proxy, layer_bits_available=layer_bits is not None)
        self.proxy = proxy
        self.model = model
        self.batch = batch
        self.choices = tuple(sorted(set(int(b) for b in choices)))
        if not self.choices or self.choices[0] < 2:
            raise ValueError(f"bit choices must be integers >= 2, got {list(choices)}")
        self.reference = self.choices[-1]
        self.layers = list(quantizable_layers(model))
        self.params = {n: int(m.weight.numel()) for n, m in quantizable_layers(model).items()}
        self.exact = exact
        self._stats_kwargs = dict(act_bits=act_bits, calib_inputs=calib_inputs, hessian_samples=hessian_samples,
                                  seed=seed, device=device, store_dtype=store_dtype)
        self.layer_bits = layer_bits
        self.table_stats = sorted(proxy.stats_needed & set(LAYER_BITS_STATS))
        lacking = sorted(set(self.table_stats) - set(layer_bits.values)) if layer_bits is not None else []
        if lacking:
            raise StatUnavailableError(f"the per-(layer, bits) table lacks {lacking} "
                                       "(lb_hessian_error needs a table built with its Hessian traces)")
        self.needed = sorted(proxy.stats_needed - set(LAYER_BITS_STATS))  # those a statistics pass measures
        self.network_stats = sorted(set(self.needed) - LOCAL_STATS)
        self.stats_passes = 0
        self.stats_seconds = 0.0
        self._cache: dict[Bits, float] = {}
        self._table: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        self._sizes: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._order: list[str] = list(self.layers)
        self._decomposed: tuple[Separable | None, str] | None = None
        if not exact:
            self._build_table(progress)

    # ------------------------------------------------------------------ stats
    def _measure(self, bits: Mapping[str, int]) -> NetworkStats:
        if not self.needed:  # the proxy reads the per-(layer, bits) table only: no pass
            return self._from_layer_bits(bits)
        start = time.perf_counter()
        stats = compute_stats(self.model, self.batch, dict(bits), self.needed, **self._stats_kwargs)
        self.stats_passes += 1
        self.stats_seconds += time.perf_counter() - start
        if self.table_stats:
            for layer, values in self._from_layer_bits(bits).layers.items():
                stats.layers.setdefault(layer, {}).update(values)
        return stats

    def _from_layer_bits(self, bits: Mapping[str, int]) -> NetworkStats:
        """Return configuration `bits`'s `lb_*` statistics from the per-(layer, bits) table."""
        assert self.layer_bits is not None  # check_stats refuses a proxy reading lb_* without a table
        return self.layer_bits.network_stats(bits, self.table_stats)

    def _build_table(self, progress: Callable[[int, int], None] | None) -> None:
        ref = {n: self.reference for n in self.layers}
        if not self.needed:
            # Only per-(layer, bits) statistics: the table already holds every (layer, width).
            table = self.layer_bits
            assert table is not None  # check_stats refuses a proxy reading lb_* without a table
            self._sizes, self._order = (dict(table.params), {}), list(table.layers)
            for b in self.choices:
                for name, values in self._from_layer_bits({n: b for n in self.layers}).layers.items():
                    self._table[(name, b)] = values
            return
        if not self.network_stats:
            # Local statistics of a layer at b bits are the same whatever the others' bits: one pass per choice.
            runs = [({n: b for n in self.layers}, None, b) for b in self.choices]
        else:
            runs = [(ref, None, self.reference)]
            runs += [({**ref, layer: b}, layer, b) for layer in self.layers for b in self.choices if b != self.reference]
        for i, (bits, layer, b) in enumerate(runs):
            stats = self._measure(bits)
            if i == 0:
                self._sizes = (dict(stats.params), dict(stats.flops))
                self._order = list(stats.layers)  # forward order, as compute_stats gives it
            for name in ([layer] if layer is not None else self.layers):
                if name in stats.layers:
                    self._table[(name, b)] = stats.layers[name]  # lb_* included: _measure merged them
            if progress:
                progress(i + 1, len(runs))

    def stats_for(self, bits: Mapping[str, int] | Bits) -> NetworkStats:
        """Return the statistics the separable model assigns to configuration `bits`."""
        widths = self._widths(bits)
        if self.exact:
            return self._measure(dict(zip(self.layers, widths)))
        width = dict(zip(self.layers, widths))
        layers = {n: self._table[(n, width[n])] for n in self._order if (n, width[n]) in self._table}
        params, flops = self._sizes
        return NetworkStats(layers, dict(params), dict(flops))

    def _widths(self, bits: Mapping[str, int] | Bits) -> Bits:
        widths = tuple(int(bits[n]) for n in self.layers) if isinstance(bits, Mapping) else tuple(int(b) for b in bits)
        bad = [b for b in widths if b not in self.choices]
        if len(widths) != len(self.layers) or bad:
            raise ValueError(f"a configuration gives one width from {list(self.choices)} to each of "
                             f"{len(self.layers)} layers; got {list(widths)}")
        return widths

    # ---------------------------------------------------------------- scoring
    def score(self, bits: Mapping[str, int] | Bits) -> float:
        """Return the proxy's score of configuration `bits` (NaN when the program fails on it); cached."""
        widths = self._widths(bits)
        if widths not in self._cache:
            try:
                self._cache[widths] = self.proxy.evaluate(self.stats_for(widths))
            except ProxyEvaluationError:
                self._cache[widths] = math.nan
        return self._cache[widths]

    def exact_score(self, bits: Mapping[str, int] | Bits) -> float:
        """Return the proxy's score on the statistics of the actually quantized network (one statistics pass)."""
        try:
            return self.proxy.evaluate(self._measure(dict(zip(self.layers, self._widths(bits)))))
        except ProxyEvaluationError:
            return math.nan

    @property
    def evaluations(self) -> int:
        return len(self._cache)

    def separable(self) -> Separable | None:
        """Return the proxy as a per-layer sum over the separable model, or None (see `why_not_separable`)."""
        if self._decomposed is None:
            self._decomposed = self._decompose()
        return self._decomposed[0]

    @property
    def why_not_separable(self) -> str:
        """Return why `separable()` is None ("" when it is not)."""
        self.separable()
        return self._decomposed[1]  # type: ignore[index]

    def _decompose(self) -> tuple[Separable | None, str]:
        if self.exact:
            return None, "exact statistics couple the layers (the separable model is off)"
        structure = layer_sum(self.proxy)
        if structure is None:
            return None, (f"{self.proxy.formula()} is not a monotone function of sums over layers "
                          "(sum_layers / mean_layers / wmean_layers combined by n_neg, n_add, n_sub)")
        needed = set(self.needed)
        entries = [n for n in self.layers if (n, self.reference) in self._table
                   and needed <= self._table[(n, self.reference)].keys()]
        params = np.array([float(self._sizes[0].get(n, 0)) for n in entries])
        coef = np.zeros((len(self.layers), len(self.choices)))
        for node, c in structure.coefs.items():
            sub = sub_program(node)
            weights = layer_weights(node.name, params)
            for w, name in zip(weights, entries):
                i = self.layers.index(name)
                for k, b in enumerate(self.choices):
                    one = NetworkStats({name: self._table[(name, b)]}, {name: self._sizes[0].get(name, 0)},
                                       {name: self._sizes[1].get(name, 0)})
                    try:
                        term = sub.evaluate(one)
                    except ProxyEvaluationError:
                        term = math.nan
                    coef[i, k] += c * w * term if math.isfinite(term) else math.nan
        coef[~np.isfinite(coef)] = np.nan
        if np.isnan(coef).all(axis=1).any():
            return None, "the proxy is not finite at any bit-width of some layer"
        direction = structure.sign
        if structure.outer != "identity":
            lo, hi = float(np.nansum(np.nanmin(coef, axis=1))), float(np.nansum(np.nanmax(coef, axis=1)))
            if lo >= 0:
                pass
            elif hi <= 0:
                direction = -direction
            else:
                return None, (f"{structure.outer} wraps a sum that changes sign between configurations "
                              f"(from {lo:.3g} to {hi:.3g})")
        return Separable(coef, direction, structure), ""


def check_stats(proxy: Proxy, layer_bits_available: bool = False) -> None:
    """Fail naming the statistics `proxy` reads that a quantized CNN does not have (e.g. transformer ones).

    `lb_*` statistics need the per-(layer, bits) table (`layer_bits_available`:
    `emq.apply.mq.benchmark_objective` builds it for an MQ benchmark).
    """
    table = [n for n in sorted(proxy.stats_needed) if n in LAYER_BITS_STATS]
    if table and not layer_bits_available:
        raise StatUnavailableError(
            f"proxy {proxy.formula()} reads {', '.join(table)}, from the per-(layer, bits) table of a benchmark: "
            "allocate it on an MQ benchmark (emq apply mq NAME), which builds the table, or pass layer_bits=")
    available = set(applicable_stats(True)) | set(LAYER_BITS_STATS)
    missing = sorted(proxy.stats_needed - available)
    if missing:
        raise StatUnavailableError(
            f"proxy {proxy.formula()} needs statistic(s) {', '.join(missing)}, which a quantized CNN does not "
            f"have; available: {', '.join(sorted(available))}")
