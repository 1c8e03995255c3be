"""Best per-layer weight bit-widths under a size budget, by an exported proxy.

The budget is on the bit-weighted parameter count, sum over layers of
bits x weights: given in megabytes (that sum / 8 / 1e6) or as the average
bit-width per weight (that sum / total weights). Both are turned into one integer
cap on the sum, and every configuration returned satisfies it exactly.

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

How the best configuration is found (`allocate`):

- `milp`: when the proxy is a monotone function of a sum of per-layer terms
  (`emq.apply.decompose`), the separable model makes the problem a multiple-choice
  knapsack, solved to proven optimality with `scipy.optimize.milp` (HiGHS, gap 0);
- `ga`: a seeded genetic algorithm (`emq.apply.evolve`) over configurations; an over-budget child
  is repaired by lowering the bits of random layers (chosen with probability
  proportional to their weights) until it fits;
- `auto`: milp when the proxy is separable (and statistics are not exact), else ga.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from emq.apply.decompose import LayerSum, apply_outer, layer_sum, layer_weights, sub_program
from emq.apply.evolve import Operators, evolve
from emq.errors import BudgetError, NotSeparableError, StatUnavailableError
from emq.proxy import Proxy, ProxyEvaluationError
from emq.quant.layers import quantizable_layers
from emq.stats import NetworkStats, stats_with
from emq.stats.compute import applicable_stats, compute_stats

#: The weight bit-widths of the embedded MQ benchmark.
DEFAULT_CHOICES: tuple[int, ...] = (2, 3, 4, 8)
BUDGET_UNITS: tuple[str, ...] = ("mb", "avg-bits")
METHODS: tuple[str, ...] = ("auto", "milp", "ga")
#: Statistics of a layer that depend on its own bit-width only (or on none).
LOCAL_STATS = stats_with(layer_local=True)

Bits = tuple[int, ...]  # one width per layer, in the objective's layer order


# ----------------------------------------------------------------------------- budget
#: The largest cap (bit-weights) a budget stands for: far above any network, small enough to stay exact.
MAX_CAP = 2 ** 62


@dataclass(frozen=True)
class Budget:
    """A cap on the model size: `value` megabytes ("mb") or average bits per weight ("avg-bits")."""

    value: float
    unit: str = "mb"

    def __post_init__(self) -> None:
        if self.unit not in BUDGET_UNITS:
            raise ValueError(f"budget unit must be one of {', '.join(BUDGET_UNITS)}, got {self.unit!r}")
        if not (isinstance(self.value, (int, float)) and math.isfinite(self.value) and self.value > 0):
            raise BudgetError(f"budget must be a positive number, got {self.value!r}")

    def cap(self, total_params: int) -> int:
        """Return the largest allowed sum of bits x weights (an integer; `within` holds for it)."""
        scale = 8e6 if self.unit == "mb" else float(total_params)
        if self.value * scale >= MAX_CAP:  # e.g. 1e308 MB: no network comes near, and floor(inf) would fail
            return MAX_CAP
        cap = math.floor(self.value * scale)
        while (cap + 1) / scale <= self.value:  # float rounding of value * scale
            cap += 1
        while cap > 0 and cap / scale > self.value:
            cap -= 1
        return cap

    def describe(self) -> str:
        return f"{self.value:g} MB" if self.unit == "mb" else f"{self.value:g} average bits"


def size_bits(bits: Mapping[str, int], params: Mapping[str, int]) -> int:
    """Return sum over layers of bits x weights."""
    return int(sum(int(bits[n]) * int(params[n]) for n in params))


def size_mb(bits: Mapping[str, int], params: Mapping[str, int]) -> float:
    """Return the weights' size in megabytes (10^6 bytes) at `bits`."""
    return size_bits(bits, params) / 8e6


def average_bits(bits: Mapping[str, int], params: Mapping[str, int]) -> float:
    """Return the bit-width averaged over weights."""
    return size_bits(bits, params) / sum(params.values())


# -------------------------------------------------------------------------- objective
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
    ) -> None:
        check_stats(proxy)
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
        self.needed = sorted(proxy.stats_needed)
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
        start = time.perf_counter()
        stats = compute_stats(self.model, self.batch, dict(bits), self.needed, **self._stats_kwargs)
        self.stats_passes += 1
        self.stats_seconds += time.perf_counter() - start
        return stats

    def _build_table(self, progress: Callable[[int, int], None] | None) -> None:
        ref = {n: self.reference for n in self.layers}
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
                    self._table[(name, b)] = stats.layers[name]
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


# ------------------------------------------------------------------------- allocation
@dataclass
class BitAllocation:
    """One allocation: the bits per layer, their size, the proxy's score, and how it was found.

    `evaluations` counts proxy evaluations: distinct configurations (ga) or per-layer terms (milp).
    """

    bits: dict[str, int]
    method: str
    score: float
    size_bits: int
    size_mb: float
    average_bits: float
    budget: str
    cap_bits: int
    optimal: bool
    evaluations: int
    seconds: float
    proxy: str = ""
    notes: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = self.score if math.isfinite(self.score) else str(self.score)
        return data


def check_stats(proxy: Proxy) -> None:
    """Fail naming the statistics `proxy` reads that a quantized CNN does not have (e.g. transformer ones)."""
    available = set(applicable_stats(True))
    missing = sorted(proxy.stats_needed - available)
    if missing:
        raise StatUnavailableError(
            f"proxy {proxy.formula()} needs statistic(s) {', '.join(missing)}, which a quantized CNN does not "
            f"have; available: {', '.join(sorted(available))}")


def check_method(proxy: Proxy, method: str, exact: bool = False) -> None:
    """Fail early when `method` cannot run on `proxy` (milp needs a layer-separable proxy and the separable model)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "milp" and exact:
        raise NotSeparableError("--method milp solves the separable statistics model; exact statistics need --method ga")
    if method == "milp" and layer_sum(proxy) is None:
        raise NotSeparableError(f"--method milp needs a proxy that is a monotone function of sums over layers "
                                f"(sum_layers / mean_layers / wmean_layers combined by n_neg, n_add, n_sub); "
                                f"{proxy.formula()} is not; use --method ga")


def check_budget(budget: Budget, params: Mapping[str, int], choices: Sequence[int]) -> int:
    """Return the integer cap of `budget`, or fail when even the lowest width everywhere exceeds it."""
    total = sum(params.values())
    cap = budget.cap(total)
    low = min(choices)
    if low * total > cap:
        raise BudgetError(
            f"budget {budget.describe()} is below the smallest configuration: every layer at {low} bits is "
            f"{low * total / 8e6:.6g} MB ({low} average bits, {total} weights); raise the budget")
    return cap


def repair_bits(widths: Bits, params: Sequence[int], choices: Sequence[int], cap: int, rng: random.Random) -> Bits:
    """Return `widths` lowered until sum(bits x params) <= cap: a random layer (weighted by its size) drops one step."""
    widths = list(widths)
    order = sorted(choices)
    size = sum(b * p for b, p in zip(widths, params))
    while size > cap:
        open_ = [i for i, b in enumerate(widths) if b > order[0]]
        i = rng.choices(open_, weights=[params[j] for j in open_])[0]
        lower = order[order.index(widths[i]) - 1]
        size -= (widths[i] - lower) * params[i]
        widths[i] = lower
    return tuple(widths)


def uniform_within(params: Mapping[str, int], choices: Sequence[int], cap: int) -> int | None:
    """Return the largest width that fits the cap when every layer uses it (None if none does)."""
    total = sum(params.values())
    fitting = [b for b in choices if b * total <= cap]
    return max(fitting) if fitting else None


def allocate(
    objective: BitObjective,
    budget: Budget,
    *,
    method: str = "auto",
    seed: int = 0,
    population: int = 30,
    generations: int = 20,
    progress: Callable[[int, float], None] | None = None,
) -> BitAllocation:
    """Return the configuration maximising `objective` whose size is within `budget` (never above it)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    start = time.perf_counter()
    params = [objective.params[n] for n in objective.layers]
    cap = check_budget(budget, objective.params, objective.choices)
    notes: list[str] = []
    sep = objective.separable() if method in ("auto", "milp") else None
    if method == "milp" and sep is None:
        raise NotSeparableError(f"--method milp needs a proxy that is a sum of per-layer terms: "
                                f"{objective.why_not_separable}; use --method ga")
    if sep is not None:
        widths, optimal = _solve_milp(sep, params, objective.choices, cap)
        used, history, evaluations = "milp", [], sep.coef.size
        if np.allclose(np.nan_to_num(sep.coef - np.nanmax(sep.coef, axis=1, keepdims=True), nan=0.0), 0.0):
            notes.append("the proxy does not depend on the bit-widths: every feasible configuration scores the same")
    else:
        if method == "auto":
            notes.append(f"genetic algorithm: {objective.why_not_separable}")
        widths, history, evaluations = _run_ga(objective, params, cap, seed, population, generations, progress)
        used, optimal = "ga", False
    bits = dict(zip(objective.layers, widths))
    assert size_bits(bits, objective.params) <= cap, "allocation exceeds the budget"
    return BitAllocation(
        bits=bits, method=used, score=objective.score(widths), size_bits=size_bits(bits, objective.params),
        size_mb=size_mb(bits, objective.params), average_bits=average_bits(bits, objective.params),
        budget=budget.describe(), cap_bits=cap, optimal=optimal, evaluations=evaluations,
        seconds=time.perf_counter() - start, proxy=objective.proxy.formula(), notes=notes, history=history)


def _solve_milp(sep: Separable, params: Sequence[int], choices: Sequence[int], cap: int) -> tuple[Bits, bool]:
    return maximise_within(sep.direction * sep.coef, params, choices, cap)


def maximise_within(gain: np.ndarray, params: Sequence[int], choices: Sequence[int], cap: int) -> tuple[Bits, bool]:
    """Return (widths maximising sum_l gain[l, k_l] with sum(bits x params) <= cap, proven optimal).

    `gain` is (layers, choices), NaN where a width may not be used: the multiple-choice
    knapsack of any separable objective, solved by integer programming (HiGHS, gap 0).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    n_layers, n_choices = gain.shape
    # Subtracting each layer's best term changes no argmax (one choice per layer) and keeps the numbers small.
    gain = gain - np.nanmax(gain, axis=1, keepdims=True)
    scale = float(np.nanmax(np.abs(gain))) or 1.0
    cost = -np.nan_to_num(gain / scale, nan=0.0).ravel()
    upper = np.where(np.isnan(gain), 0.0, 1.0).ravel()
    rows = np.repeat(np.arange(n_layers), n_choices)
    one_each = csr_array((np.ones(n_layers * n_choices), (rows, np.arange(n_layers * n_choices))),
                         shape=(n_layers, n_layers * n_choices))
    size_row = np.array([[p * b for p in params for b in choices]], dtype=np.float64)
    with _silenced_stdout():
        res = milp(cost, integrality=np.ones_like(cost), bounds=Bounds(0.0, upper),
                   constraints=[LinearConstraint(one_each, 1.0, 1.0), LinearConstraint(size_row, -np.inf, float(cap))],
                   options={"mip_rel_gap": 0.0})
    if res.x is None:
        raise BudgetError(f"no configuration the proxy can score fits the cap of {cap} bit-weights ({res.message})")
    ks = res.x.reshape(n_layers, n_choices).argmax(axis=1)
    widths = tuple(int(choices[k]) for k in ks)
    if sum(b * p for b, p in zip(widths, params)) > cap:  # solver tolerance; never hand back an over-budget answer
        widths = repair_bits(widths, params, choices, cap, random.Random(0))
        return widths, False
    return widths, bool(res.status == 0)


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null for a block: HiGHS prints solver notes from C, whatever `disp` says,
    and they would corrupt `--json` output."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _run_ga(objective: BitObjective, params: Sequence[int], cap: int, seed: int, population: int, generations: int,
            progress: Callable[[int, float], None] | None) -> tuple[Bits, list[dict[str, float]], int]:
    choices = objective.choices
    n = len(params)

    def mutate(w: Bits, rng: random.Random) -> Bits:
        out = list(w)
        hits = [i for i in range(n) if rng.random() < 2.0 / n] or [rng.randrange(n)]
        for i in hits:
            out[i] = rng.choice([b for b in choices if b != out[i]])
        return tuple(out)

    def crossover(a: Bits, b: Bits, rng: random.Random) -> tuple[Bits, Bits]:
        mask = [rng.random() < 0.5 for _ in range(n)]
        return (tuple(x if m else y for x, y, m in zip(a, b, mask)),
                tuple(y if m else x for x, y, m in zip(a, b, mask)))

    ops = Operators(
        sample=lambda rng: tuple(rng.choice(choices) for _ in range(n)),
        mutate=mutate,
        crossover=crossover,
        repair=lambda w, rng: repair_bits(w, params, choices, cap, rng),
        key=lambda w: w,
    )
    # Every uniform configuration that fits seeds the first population.
    seeds = [tuple([b] * n) for b in reversed(choices) if b * sum(params) <= cap]
    result = evolve(ops, objective.score, population=population, generations=generations, seed=seed, seeds=seeds,
                    progress=progress)
    return result.best, result.history, result.evaluations
