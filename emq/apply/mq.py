"""Bit allocation on a mixed-precision benchmark, and its comparison with simple allocators by real PTQ accuracy.

`benchmark_objective` turns a benchmark (its network, batch, calibration images, bit
choices) and a proxy into a `BitObjective`. `compare_mq` allocates under each budget
with every proxy and with the usual alternatives, then measures each configuration's
real post-training-quantization accuracy on the benchmark's test split (mq-digits:
`emq.bench.mq_digits_train.ptq_accuracy`, exactly as its ground truth was measured):

- each proxy, maximised exactly (MILP) when separable, else by the GA; with `ga_too`,
  a separable proxy is also given to the GA (`NAME (ga)`), to show how close it gets;
- `hawq`: the registered HAWQ-style baseline (-sum of Hessian trace x squared
  quantization error) as the objective of the same optimiser;
- `hawq_v2`: HAWQ-v2 as published (full-precision average Hessian trace x squared
  quantization error per layer), minimised exactly (`emq.apply.hawq_v2`);
- `qloss-greedy`: layers lowered greedily by the quantized network's calibration
  cross-entropy (`emq.apply.greedy`), the trivial predictor used as an allocator;
- `bparams`: the registered bit-weighted parameter count, maximised (fill the budget);
- `qloss_layer_sum`: minus the sum of each layer's calibration-loss increase alone at
  its bits (the per-(layer, bits) table, `emq.stats.layer_bits`), maximised exactly: the
  separable trivial predictor, of the cost HAWQ-v2 has;
- `uniform`: every layer at the largest width that fits;
- `random`: N configurations drawn uniformly per layer, repaired into the budget like
  GA children; mean and standard deviation of their accuracies;
- `reference`: the best configuration among the benchmark's measured ones within the
  budget, chosen by test accuracy (an oracle, not a method; it shows the headroom).

The report ends with a reading computed from the rows (`emq.apply.reading`): each
proxy's rank under each budget and every method that beats it.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from emq.apply.allocation import BitAllocation, allocate, check_method
from emq.apply.bits import BitObjective, check_stats
from emq.apply.budget import Budget, average_bits, check_budget, repair_bits, size_bits, size_mb, uniform_within
from emq.apply.greedy import QLOSS_GREEDY_FORMULA, CalibrationLoss, allocate_qloss_greedy
from emq.apply.hawq_v2 import HAWQ_V2_FORMULA, allocate_hawq_v2, hawq_v2_objective
from emq.apply.reading import reading
from emq.baselines import get_baseline
from emq.bench.base import Benchmark
from emq.fitness import kendall as kendall_tau
from emq.proxy import Proxy
from emq.quant.layers import quantizable_layers
from emq.stats.cache import calibration_inputs, layer_bits_table
from emq.stats.catalogue import LAYER_BITS_STATS
from emq.stats.config import StatsConfig

#: Baselines used as allocation objectives in the comparison.
COMPARE_BASELINES: tuple[str, ...] = ("hawq", "bparams", "qloss_layer_sum")
#: Allocators that are not "maximise an objective over statistics", compared by default.
COMPARE_ALLOCATORS: tuple[str, ...] = ("hawq_v2", "qloss-greedy")


def bit_choices(bench: Benchmark) -> tuple[int, ...]:
    """Return the benchmark's weight bit choices (its ground truth's list, else every width its candidates use)."""
    gt = getattr(bench, "gt", None)
    if isinstance(gt, dict) and gt.get("weight_bit_choices"):
        return tuple(sorted(int(b) for b in gt["weight_bit_choices"]))
    widths = {int(b) for c in bench.candidates() if c.bits for b in c.bits.values()}
    if not widths:
        raise ValueError(f"benchmark {bench.name!r} has no bit configurations: bit allocation needs an MQ benchmark")
    return tuple(sorted(widths))


def network_params(bench: Benchmark) -> dict[str, int]:
    """Return the weights per quantizable layer of `bench`'s network."""
    return {n: int(m.weight.numel()) for n, m in quantizable_layers(bench.build_model(bench.candidates()[0])).items()}


def precheck(bench: Benchmark, proxies: dict[str, Proxy], budgets: Sequence[Budget], method: str = "auto",
             exact: bool = False) -> None:
    """Fail before any statistics are computed when a budget, a proxy's statistics or the method cannot work."""
    if bench.family != "mq":
        raise ValueError(f"benchmark {bench.name!r} is a {bench.family} benchmark; bit allocation needs an MQ one")
    params, choices = network_params(bench), bit_choices(bench)
    for budget in budgets:
        check_budget(budget, params, choices)
    for proxy in proxies.values():
        check_stats(proxy, layer_bits_available=True)  # benchmark_objective builds the table a proxy reads
        check_method(proxy, method, exact)


def benchmark_objective(bench: Benchmark, proxy: Proxy, *, batch_seed: int = 0, batch_size: int = 16,
                        exact: bool = False, hessian_samples: int = 2, device: str = "cpu",
                        store_dtype: torch.dtype = torch.float32,
                        progress: Callable[[int, int], None] | None = None) -> BitObjective:
    """Return `proxy` as a function of the bit configuration of `bench`'s network, on its fixed batch."""
    if bench.family != "mq":
        raise ValueError(f"benchmark {bench.name!r} is a {bench.family} benchmark; bit allocation needs an MQ one")
    model = bench.build_model(bench.candidates()[0])
    reads = sorted(proxy.stats_needed & set(LAYER_BITS_STATS))
    table = layer_bits_table(bench, StatsConfig(batch_seed=batch_seed, batch_size=batch_size, device=device),
                             hessian="lb_hessian_error" in reads) if reads else None
    return BitObjective(proxy, model, bench.batch(batch_seed, batch_size), choices=bit_choices(bench),
                        act_bits=getattr(bench, "act_bits", 8), calib_inputs=calibration_inputs(bench), exact=exact,
                        hessian_samples=hessian_samples, seed=batch_seed, device=device, store_dtype=store_dtype,
                        progress=progress, layer_bits=table)


class AccuracyMeter:
    """Measures a configuration's real PTQ test accuracy on mq-digits (cached per configuration)."""

    def __init__(self, bench: Benchmark) -> None:
        from emq.bench import digits
        from emq.bench.mq_digits import MQDigitsBenchmark

        if not isinstance(bench, MQDigitsBenchmark):
            raise ValueError(f"real accuracy can only be measured on mq-digits (its network and test split ship "
                             f"here), not on {bench.name!r}")
        self.bench = bench
        self.model = bench.build_model(bench.candidates()[0])
        self.calib = bench.calibration_inputs()
        self.x, self.y = digits.test_split(bench.seed)
        self._cache: dict[tuple[int, ...], float] = {}

    def __call__(self, bits: dict[str, int]) -> float:
        from emq.bench.mq_digits_train import ptq_accuracy

        key = tuple(bits[n] for n in self.bench.layers)
        if key not in self._cache:
            self._cache[key] = ptq_accuracy(self.model, bits, self.calib, self.x, self.y, act_bits=self.bench.act_bits)
        return self._cache[key]


@dataclass
class MQRow:
    """One allocator under one budget: its configuration and real test accuracy."""

    budget: str
    method: str
    allocator: str
    average_bits: float
    size_mb: float
    test_acc: float
    test_acc_std: float | None = None
    bits: dict[str, int] | None = None
    seconds: float = 0.0
    objective_score: float | None = None


@dataclass
class MQComparison:
    """Every allocator under every budget on one benchmark, plus what the numbers depend on."""

    benchmark: str
    float_test_acc: float
    test_images: int
    choices: list[int]
    act_bits: int
    total_params: int
    layers: dict[str, int]
    budgets: list[str]
    objectives: dict[str, str]
    objective_kendall: dict[str, float]
    objective_setup: dict[str, dict[str, float]]
    random_configs: int
    batch: dict[str, Any]
    rows: list[MQRow] = field(default_factory=list)
    seconds: float = 0.0
    proxies: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        return self.to_markdown()

    def to_markdown(self, command: str = "") -> str:
        """Return the report: how to regenerate it, the setup, the accuracy table and the bits per layer."""
        lines = [f"# Bit allocation with exported proxies: `{self.benchmark}`", ""]
        if command:
            lines += ["Regenerate (deterministic given the seed; "
                      f"{self.seconds:.0f} s wall-clock on 2 shared CPU cores):", "", f"    {command}", ""]
        low = min(self.choices)
        lines += [
            f"Network: the benchmark's trained network ({len(self.layers)} quantizable layers, {self.total_params} "
            f"weights), float test accuracy {self.float_test_acc:.4f} on {self.test_images} test images. "
            f"Weights per layer in {self.choices} bits (symmetric per channel), activations {self.act_bits} bits "
            "calibrated on the calibration split: the post-training quantization the ground truth used. "
            f"Budget: bit-weighted weights, sum(bits x weights); 1 average bit = {self.total_params / 8e6:.6f} MB, "
            f"all layers at {low} bits = {low * self.total_params / 8e6:.6f} MB. "
            "Every configuration below is within its budget (never above).",
            "",
            f"Proxy statistics: batch {self.batch.get('source')} seed {self.batch.get('seed')} size "
            f"{self.batch.get('size')}; the separable model of `emq.apply.bits` (each layer's statistics measured "
            "with that layer at its width and the others at the largest width; `lb_*` statistics from the "
            "per-(layer, bits) table, whose passes and seconds count in its objectives' setup even when cached).",
            "",
            "Objectives, and how faithful each is where the optimiser looks: Kendall tau between the objective "
            "(separable statistics) and the measured accuracy of all the benchmark's configurations:",
            "",
            "| objective | formula | Kendall tau vs test_acc | statistics passes | setup (s) |",
            "|---|---|---|---|---|",
        ]
        for name, formula in self.objectives.items():
            setup = self.objective_setup.get(name, {})
            tau = self.objective_kendall.get(name, math.nan)
            lines.append(f"| {name} | `{formula}` | {f'{tau:+.3f}' if math.isfinite(tau) else '-'} | "
                         f"{int(setup.get('passes', 0))} | {setup.get('seconds', 0.0):.1f} |")
        for note in self.notes:
            lines += ["", f"Note: {note}"]
        lines += ["", "Methods: a proxy or `hawq` / `bparams` (registered baselines) maximised under the budget "
                      "(`milp`: exact integer programming, proven optimal; `ga`: genetic algorithm; `NAME (ga)`: the "
                      "same proxy given to the genetic algorithm instead, to compare with the proven optimum; "
                      "`its objective`: the maximised objective's value, higher is better; `seconds`: the allocation's time, "
                      "statistics excluded); `hawq_v2`: HAWQ-v2 as published (Dong et al. 2020), the "
                      "full-precision network's average Hessian trace per layer (Hutchinson, its passes are "
                      "Hessian-vector products on the statistics batch) times ||Q_b(W) - W||^2, summed and "
                      "minimised exactly; `qloss-greedy`: from every layer at the largest width, repeatedly "
                      "lower by one step the layer whose lowering raises the PTQ network's cross-entropy on the "
                      "calibration images least per bit saved, until the budget holds (`seconds`: its loss "
                      "evaluations, cached ones counted; its Kendall row is that cross-entropy as a predictor); "
                      "`uniform`: every "
                      "layer at the largest width that fits; `random`: "
                      f"{self.random_configs} configurations uniform per layer, repaired into the budget like GA "
                      "children (mean ± std); `reference`: the best of the benchmark's measured configurations "
                      "within the budget, picked by test accuracy (an oracle, not a method).", "",
                  "| budget | method | allocator | avg bits | size (MB) | its objective | seconds | test acc |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            acc = f"{r.test_acc:.4f}" + (f" ± {r.test_acc_std:.4f}" if r.test_acc_std is not None else "")
            score = f"{r.objective_score:.6g}" if r.objective_score is not None else "-"
            lines.append(f"| {r.budget} | {r.method} | {r.allocator} | {r.average_bits:.3f} | {r.size_mb:.6f} | "
                         f"{score} | {r.seconds:.2f} | {acc} |")
        if self.proxies:
            lines += ["", "## Reading", "",
                      "Computed from the table above: each proxy's rank by test accuracy among the methods under "
                      "each budget (the oracle `reference` excluded; tied methods share a rank), and every method "
                      f"with a strictly higher test accuracy (one test image is {1 / self.test_images:.4f}).", ""]
            lines += reading(self.rows, self.proxies, self.budgets, self.test_images)
        lines += ["", "## Bits per layer", ""]
        for budget in self.budgets:
            rows = [r for r in self.rows if r.budget == budget and r.bits is not None]
            lines += [f"Budget {budget}:", "", "| layer | weights | " + " | ".join(r.method for r in rows) + " |",
                      "|---|---|" + "---|" * len(rows)]
            for layer, n in self.layers.items():
                lines.append(f"| `{layer}` | {n} | " + " | ".join(str(r.bits[layer]) for r in rows) + " |")  # type: ignore[index]
            lines.append("")
        return "\n".join(lines)


def compare_mq(
    bench: Benchmark,
    proxies: dict[str, Proxy],
    budgets: Sequence[Budget],
    *,
    method: str = "auto",
    seed: int = 0,
    random_configs: int = 10,
    baselines: Sequence[str] = COMPARE_BASELINES,
    allocators: Sequence[str] = COMPARE_ALLOCATORS,
    ga_too: bool = True,
    population: int = 30,
    generations: int = 20,
    batch_seed: int = 0,
    batch_size: int = 16,
    hessian_samples: int = 2,
    device: str = "cpu",
    store_dtype: torch.dtype = torch.float32,
    progress: Callable[[str], None] | None = None,
) -> MQComparison:
    """Return every allocator's configuration and real test accuracy under each budget (see the module docstring)."""
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    unknown = sorted(set(allocators) - set(COMPARE_ALLOCATORS))
    if unknown:
        raise ValueError(f"unknown allocator(s) {', '.join(unknown)}; known: {', '.join(COMPARE_ALLOCATORS)}")
    meter = AccuracyMeter(bench)
    objectives = dict(proxies)
    for name in baselines:
        objectives.setdefault(name, get_baseline(name).proxy())
    precheck(bench, objectives, budgets, method)
    built: dict[str, BitObjective] = {}
    setup: dict[str, dict[str, float]] = {}
    kendall: dict[str, float] = {}
    cands = bench.candidates()
    truth = bench.ground_truth()["test_acc"]
    for name, proxy in objectives.items():
        say(f"statistics for {name}: {proxy.formula()}")
        t0 = time.perf_counter()
        built[name] = benchmark_objective(bench, proxy, batch_seed=batch_seed, batch_size=batch_size,
                                          hessian_samples=hessian_samples, device=device, store_dtype=store_dtype)
        table = built[name].layer_bits  # given only to a proxy that reads it (benchmark_objective)
        # a per-(layer, bits) table counts its |L| x |B| passes and the seconds it took when computed (maybe cached)
        setup[name] = {"passes": built[name].stats_passes + (table.passes if table else 0),
                       "seconds": round(time.perf_counter() - t0 + (table.seconds if table else 0.0), 2)}
        kendall[name] = _finite_kendall([built[name].score(c.bits) for c in cands], truth)  # type: ignore[arg-type]
    first = next(iter(built.values()))
    params, choices, layers = first.params, first.choices, first.layers
    formulas = {n: p.formula() for n, p in objectives.items()}
    hawq2 = qloss = None
    if "hawq_v2" in allocators:
        say("hawq_v2: full-precision Hessian traces")
        hawq2 = hawq_v2_objective(bench.build_model(cands[0]), bench.batch(batch_seed, batch_size), choices,
                                  seed=batch_seed)
        formulas["hawq_v2"] = HAWQ_V2_FORMULA
        setup["hawq_v2"] = {"passes": hawq2.samples, "seconds": round(hawq2.seconds, 2)}
        kendall["hawq_v2"] = _finite_kendall([hawq2.score(c.bits) for c in cands], truth)  # type: ignore[arg-type]
    if "qloss-greedy" in allocators:
        calibration = bench.calibration_batch()
        if calibration is None:
            raise ValueError(f"qloss-greedy needs labelled calibration images; {bench.name!r} has none")
        qloss = CalibrationLoss(bench.build_model(cands[0]), calibration, int(getattr(bench, "act_bits", 8)))
        formulas["qloss-greedy"] = QLOSS_GREEDY_FORMULA
        setup["qloss-greedy"] = {"passes": 0, "seconds": 0.0}
    rng = random.Random(seed)
    comparison = MQComparison(
        benchmark=bench.name, float_test_acc=float(getattr(bench, "gt", {}).get("float_test_acc", math.nan)),
        test_images=len(meter.y), choices=list(choices), act_bits=int(getattr(bench, "act_bits", 8)),
        total_params=sum(params.values()), layers=dict(params), budgets=[b.describe() for b in budgets],
        objectives=formulas, objective_kendall=kendall,
        objective_setup=setup, random_configs=random_configs,
        batch=bench.batch(batch_seed, batch_size).describe(), proxies=list(proxies),
        notes=[f"for `hawq_v2`, {w}." for w in hawq2.warnings()] if hawq2 is not None else [])

    def row(budget: Budget, method_name: str, allocator: str, bits: dict[str, int], seconds: float,
            score: float | None = None) -> MQRow:
        return MQRow(budget.describe(), method_name, allocator, average_bits(bits, params), size_mb(bits, params),
                     meter(bits), None, bits, round(seconds, 2), score)

    for budget in budgets:
        cap = check_budget(budget, params, choices)
        for name, objective in built.items():
            say(f"{budget.describe()}: allocating with {name}")
            alloc: BitAllocation = allocate(objective, budget, method=method, seed=seed, population=population,
                                            generations=generations)
            how = alloc.method + (" (optimal)" if alloc.optimal else "")
            comparison.rows.append(row(budget, name, how, alloc.bits, alloc.seconds, alloc.score))
            if ga_too and name in proxies and alloc.method == "milp":
                ga = allocate(objective, budget, method="ga", seed=seed, population=population,
                              generations=generations)
                comparison.rows.append(row(budget, f"{name} (ga)", f"ga, {ga.evaluations} configurations",
                                           ga.bits, ga.seconds, ga.score))
        if hawq2 is not None:
            say(f"{budget.describe()}: allocating with hawq_v2")
            alloc = allocate_hawq_v2(hawq2, budget)
            comparison.rows.append(row(budget, "hawq_v2", "milp" + (" (optimal)" if alloc.optimal else ""),
                                       alloc.bits, alloc.seconds, alloc.score))
        if qloss is not None:
            say(f"{budget.describe()}: allocating with qloss-greedy")
            alloc = allocate_qloss_greedy(qloss, choices, budget)
            comparison.rows.append(row(budget, "qloss-greedy", f"greedy, {alloc.evaluations} configurations",
                                       alloc.bits, alloc.seconds, alloc.score))
        width = uniform_within(params, choices, cap)
        if width is not None:
            comparison.rows.append(row(budget, "uniform", f"{width} bits everywhere", {n: width for n in layers}, 0.0))
        t0 = time.perf_counter()
        picks = [dict(zip(layers, repair_bits(tuple(rng.choice(choices) for _ in layers),
                                              [params[n] for n in layers], choices, cap, rng)))
                 for _ in range(random_configs)]
        sampled = time.perf_counter() - t0
        if picks:
            accs = np.array([meter(b) for b in picks])
            comparison.rows.append(MQRow(
                budget.describe(), "random", f"{len(picks)} random feasible",
                float(np.mean([average_bits(b, params) for b in picks])),
                float(np.mean([size_mb(b, params) for b in picks])), float(accs.mean()),
                float(accs.std(ddof=1)) if len(accs) > 1 else None, None, round(sampled, 2)))
        within = [(acc, c) for c, acc in zip(cands, truth) if size_bits(c.bits, params) <= cap]  # type: ignore[arg-type]
        if within:
            acc, best = max(within, key=lambda t: t[0])
            comparison.rows.append(MQRow(budget.describe(), "reference", f"best of {len(within)} measured (oracle)",
                                         average_bits(best.bits, params), size_mb(best.bits, params),  # type: ignore[arg-type]
                                         float(acc), None, dict(best.bits), 0.0))  # type: ignore[arg-type]
    if qloss is not None:
        # Its faithfulness as a predictor, measured after the allocations so their seconds stay their own.
        say("qloss-greedy: calibration cross-entropy of every measured configuration")
        kendall["qloss-greedy"] = _finite_kendall([-qloss(tuple(c.bits[n] for n in qloss.layers))  # type: ignore[index]
                                            for c in cands], truth)
    comparison.seconds = time.perf_counter() - start
    return comparison


def _finite_kendall(scores: Sequence[float], truth: np.ndarray) -> float:
    """Return `emq.fitness.kendall` of the configurations an objective scores finitely (NaN when fewer than 3).

    A configuration an allocation objective cannot score (NaN, or an infinite value
    from a failed term) says nothing about how the objective ranks accuracy, so it is
    left out here instead of ranked at an end as the search's fitness ranks it.
    """
    values = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(values)
    return kendall_tau(values[ok], np.asarray(truth, dtype=np.float64)[ok])
