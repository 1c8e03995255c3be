"""The baseline registry: a hand-designed proxy by name, its families, its kind (program or model), and
whether it is a trivial predictor (size, bits, architecture hyperparameters) the honest bar compares against."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence


from primitives.errors import EMQUserError, UnknownNameError
from primitives.registry import Registry
import torch
from torch import nn

from emq.bench.base import Batch, Benchmark
from emq.proxy import Proxy
from emq.stats.teacher import Teacher


@dataclass(frozen=True)
class BaselineContext:
    """What a model baseline may need besides the network and batch.

    `float_model` is the candidate's network before quantization (on `device`),
    `calibration` the benchmark's calibration images with labels (None when it has
    none), `teacher` the benchmark's distillation teacher (None when it has none), and
    `memo` a dict shared by the candidates of one scoring call, for work
    that does not depend on the candidate (e.g. the full-precision Hessian of an MQ
    benchmark's one network).
    """

    device: torch.device
    seed: int
    act_bits: int | None
    float_model: nn.Module | None = None
    calibration: Batch | None = None
    teacher: Teacher | None = None
    memo: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


ModelBaselineFn = Callable[[nn.Module, Batch, "dict[str, int] | None", BaselineContext], float]


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: a proxy `formula` (program kind) or a function of the network (model kind)."""

    name: str
    families: tuple[str, ...]
    doc: str
    formula: str | None = None
    fn: ModelBaselineFn | None = None
    #: Bump when a model baseline's code changes: its cached scores are then recomputed.
    version: int = 1
    #: A trivial predictor (size, bit count, quantized loss): the bar a discovery must clear.
    trivial: bool = False
    #: Applies only to benchmarks that name a distillation teacher (`Benchmark.teacher`).
    needs_teacher: bool = False
    #: Scores a configuration as a sum of per-layer terms of each layer's own bits (`emq.separable`): one
    #: per-(layer, bits) table scores every configuration, and the exact knapsack allocates with it. False:
    #: each configuration costs its own network pass (e.g. `qloss_calib`).
    separable: bool = False

    def applies_to(self, bench: Benchmark) -> bool:
        """Whether this baseline can score `bench`'s candidates (its family; its teacher when needed)."""
        return bench.family in self.families and (not self.needs_teacher or bench.teacher() is not None)

    @property
    def kind(self) -> str:
        return "program" if self.formula is not None else "model"

    def proxy(self) -> Proxy:
        """Return the program of a program baseline."""
        if self.formula is None:
            raise TypeError(f"baseline {self.name!r} is a model baseline; it has no formula")
        return Proxy.from_formula(self.formula, meta={"baseline": self.name})


class BaselineNotApplicableError(EMQUserError, ValueError):
    """A named baseline cannot score this benchmark (other family, or no distillation teacher)."""


class UnknownBaselineError(UnknownNameError):
    """A baseline name that is not registered (or not one of a benchmark's); the message lists valid names."""


BASELINES: Registry[Baseline] = Registry("baseline", UnknownBaselineError)


def register_baseline(
    name: str,
    families: Sequence[str] = ("mq", "vit", "nas"),
    doc: str = "",
    *,
    formula: str | None = None,
    version: int = 1,
    trivial: bool = False,
    needs_teacher: bool = False,
    separable: bool = False,
) -> Any:
    """Register a baseline under `name`.

    With `formula`, registers a program baseline at once and returns it; without,
    returns a decorator for a model baseline `fn(net, batch, bits, ctx) -> float`.
    """

    def add(fn: ModelBaselineFn | None) -> Baseline:
        text = doc
        if not text and fn is not None and fn.__doc__:
            text = fn.__doc__.strip().splitlines()[0]
        return BASELINES.add(name, Baseline(name, tuple(families), text, formula, fn, version, trivial, needs_teacher,
                                            separable))

    if formula is not None:
        return add(None)

    def decorator(fn: ModelBaselineFn) -> ModelBaselineFn:
        add(fn)
        return fn

    return decorator


def get_baseline(name: str) -> Baseline:
    """Return baseline `name`, or fail listing the registered ones."""
    return BASELINES[name]


def list_baselines(family: str | None = None) -> list[Baseline]:
    """Return the registered baselines (those applicable to `family` when given), by name."""
    return sorted((b for b in BASELINES.values() if family is None or family in b.families), key=lambda b: b.name)


def applicable_baselines(family: str) -> list[str]:
    """Return the names of the baselines that apply to benchmarks of `family` ("mq", "vit" or "nas"), sorted."""
    return [b.name for b in list_baselines(family)]


#: Prefix of the architecture-hyperparameter baselines: `arch:depth` ranks candidates by their depth.
ARCH_PREFIX = "arch:"


def arch_baseline_names(bench: Benchmark) -> list[str]:
    """Return `arch:<feature>` for every numeric architecture hyperparameter that varies across `bench`'s candidates."""
    rows = [bench.arch_features(c) for c in bench.candidates()]
    if not rows or not rows[0]:
        return []
    common = set.intersection(*(set(r) for r in rows))
    return [ARCH_PREFIX + k for k in sorted(common) if len({r[k] for r in rows}) > 1]


def benchmark_baselines(bench: Benchmark) -> list[str]:
    """Return every baseline that applies to `bench`: the registered ones of its family, then its arch ones."""
    return [b.name for b in list_baselines(bench.family) if b.applies_to(bench)] + arch_baseline_names(bench)


def trivial_baselines(bench: Benchmark, separable_only: bool = False) -> list[str]:
    """Return the trivial predictors of `bench` (size, FLOPs, bit counts, quantized loss, each arch hyperparameter).

    `separable_only`: those of a separable search's cost (one per-(layer, bits) table, then a
    sum per configuration): the bar of `--separable` runs, where `qloss_calib` (a pass per
    configuration) is the reference of higher cost, not the bar (issue 25).
    """
    if separable_only:
        return [b.name for b in list_baselines(bench.family) if b.trivial and b.separable]
    return [b.name for b in list_baselines(bench.family) if b.trivial] + arch_baseline_names(bench)


def is_trivial(name: str) -> bool:
    """True for a trivial predictor's name (a registered trivial baseline or an `arch:` one)."""
    return name.startswith(ARCH_PREFIX) or (name in BASELINES and BASELINES[name].trivial)
