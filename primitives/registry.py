"""The registries: the generic `Registry[T]` of every open set, and the typed primitive ops registered in one.

`Registry` is a name -> item mapping filled when a package is imported (ops,
statistics, benchmarks, baselines, architecture spaces); asking it for an unknown
name raises `UnknownNameError`, whose one line lists the valid names. Ops: one
decorator registers a pure torch function by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import torch

from primitives.errors import UnknownNameError
from primitives.types import Kind

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """Items of one kind (ops, statistics, benchmarks, baselines, ...) by name.

    A dict, so lookups, `in` and iteration are the usual ones; `registry[name]` of an
    unknown name raises `error` (an `UnknownNameError`) naming the valid names, and
    `add` refuses a name registered twice.
    """

    def __init__(self, kind: str, error: type[UnknownNameError] = UnknownNameError) -> None:
        super().__init__()
        self.kind = kind
        self.error = error

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = item
        return item

    def __missing__(self, name: str) -> T:
        raise self.error(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self)) or 'none registered'}")


@dataclass(frozen=True)
class Op:
    """A registered primitive: a pure function with a type signature.

    `fn` takes one tensor per input kind. Aggregations (S -> N over layers) receive
    the stacked per-layer scalars (1-d tensor, one entry per layer) and the per-layer
    parameter counts (1-d tensor, same length) so that weighted means are possible.
    `commutative` lets the canonical hash sort the arguments of binary ops.

    Metadata the evaluator and the simplifier read (one place, not lists elsewhere):
    - `elementwise`: computed entry by entry (`shape_rule` "same" for unary maps,
      "align" for binary ops), so it runs directly on candidate-stacked tensors;
    - `shape_rule`: "same", "align" (`primitives.binary.align`), "reduce" (any -> 0-d),
      "layers" (stacked per-layer scalars -> 0-d), "across" (a T -> T op over the layers of a
      network: `fn` takes the list of the layers' tensors, `primitives.layer_tensors`),
      "population" (an N op over the candidates scored together: `fn` takes the 1-d vector of
      their scores, `primitives.ranks`) or "custom";
    - algebraic identities, all exact in floating point: `equal_args` ("self": f(x, x) = x;
      "cancel": f(x, x) is a constant; an op name g: f(x, x) = g(x)), `involution`
      (f(f(x)) = x), `projection` (f(f(x)) = f(x)), `sign_blind` (f reads only |x| entry
      by entry, so f(neg(x)) = f(abs(x)) = f(x)), `order_blind` (a reduction of all entries
      that ignores their order and shape, so f(p(x)) = f(x) for a `permutes` op p such as
      flatten_sort; equal up to the order of summation);
    - `sketch`: what the op computes from a uniform sample of K of its argument's n entries
      (`emq.sketch`, searches with `--sketch K`): "sample" (the same formula on the sample
      estimates the whole tensor's value: means, spreads, extremes, and zscore / minmax,
      whose centring and scale come from the sample), "total" (a sum over entries: the
      sample's value times n / K), "norm" (a root of a sum of squares: times sqrt(n / K)),
      "log_total" (a log of a sum: plus log(n / K)), "count" (the number of entries: n);
      "" when the op reads the argument's shape or positions (matrix, softmax, row ops):
      a program with such an op is scored on the full statistics. Entry-wise ops
      (`elementwise`) need no rule: a sample of their output is their output on the sample.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    inputs: tuple[Kind, ...]
    output: Kind
    group: str
    doc: str
    commutative: bool = False
    elementwise: bool = False
    shape_rule: str = "custom"
    equal_args: str = ""
    involution: bool = False
    projection: bool = False
    sign_blind: bool = False
    order_blind: bool = False
    permutes: bool = False
    sketch: str = ""

    @property
    def arity(self) -> int:
        return len(self.inputs)

    @property
    def is_aggregation(self) -> bool:
        """True for ops that combine the layers of a network (S -> N)."""
        return self.inputs == (Kind.S,) and self.output == Kind.N

    @property
    def is_cross_layer(self) -> bool:
        """True for T -> T ops that combine a network's per-layer tensors (`sum_layers_t`, ...)."""
        return self.shape_rule == "across"

    @property
    def is_population(self) -> bool:
        """True for N ops whose value depends on the other candidates' scores (rank aggregation)."""
        return self.shape_rule == "population"

    def signature(self) -> str:
        return f"{', '.join(k.value for k in self.inputs)} -> {self.output.value}"


class UnknownOpError(UnknownNameError):
    """Raised for an op name that is not registered; the message lists valid names."""


OPS: Registry[Op] = Registry("op", UnknownOpError)
#: How an op's output shape follows from its inputs (see `Op`).
SHAPE_RULES = ("same", "align", "reduce", "layers", "across", "population", "custom")
#: How an op reads a sample of its argument's entries (see `Op.sketch`; "" = it cannot).
SKETCH_RULES = ("", "sample", "total", "norm", "log_total", "count")


def register(
    name: str,
    inputs: tuple[Kind, ...],
    output: Kind,
    group: str,
    commutative: bool = False,
    **metadata: Any,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Return a decorator that registers `fn` as op `name` with the given signature (and `Op` metadata)."""

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        add_op(name, fn, inputs, output, group, commutative=commutative, **metadata)
        return fn

    return decorator


def add_op(
    name: str,
    fn: Callable[..., torch.Tensor],
    inputs: tuple[Kind, ...],
    output: Kind,
    group: str,
    commutative: bool = False,
    doc: str | None = None,
    **metadata: Any,
) -> Op:
    """Register one op (used directly when one function serves several signatures); `metadata`: `Op` fields."""
    text = doc if doc is not None else (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    op = Op(name=name, fn=fn, inputs=tuple(inputs), output=output, group=group, doc=text, commutative=commutative,
            **metadata)
    if op.shape_rule not in SHAPE_RULES:
        raise ValueError(f"op {name!r}: shape_rule {op.shape_rule!r} is not one of {', '.join(SHAPE_RULES)}")
    if op.sketch not in SKETCH_RULES:
        raise ValueError(f"op {name!r}: sketch {op.sketch!r} is not one of {', '.join(map(repr, SKETCH_RULES))}")
    return OPS.add(name, op)


def get_op(name: str) -> Op:
    """Return the op registered as `name`, or fail listing the valid names."""
    return OPS[name]


def list_ops(output: Kind | None = None, inputs: tuple[Kind, ...] | None = None) -> list[Op]:
    """Return registered ops, optionally only those with the given output / input kinds."""
    ops = sorted(OPS.values(), key=lambda op: (op.group, op.name))
    if output is not None:
        ops = [op for op in ops if op.output == output]
    if inputs is not None:
        ops = [op for op in ops if op.inputs == tuple(inputs)]
    return ops
