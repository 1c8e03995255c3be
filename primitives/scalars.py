"""Scalar arithmetic: per-layer scalars (S -> S, S, S -> S) and network scalars (N -> N, N, N -> N).

The tensor ops already compute these maps elementwise on 0-d tensors, so each S and
N op is the same function as its T counterpart, registered again under the scalar
signature: one definition, one numerical guard, no drift between the versions.
"""
from __future__ import annotations

from typing import Callable

import torch

from primitives import binary, unary
from primitives.registry import add_op
from primitives.types import Kind

S, N = Kind.S, Kind.N

Fn = Callable[..., torch.Tensor]

# name stem -> (function, doc); "s_" ops exist for every stem, "n_" ops only for
# NETWORK_STEMS. Docs are given here because the tensor docs mention shape rules.
UNARY_STEMS: dict[str, tuple[Fn, str]] = {
    "neg": (unary.neg, "Return -x."),
    "abs": (unary.absolute, "Return |x|."),
    "log": (unary.log_abs, "Return log(|x| + eps)."),
    "sqrt": (unary.sqrt_abs, "Return sqrt(|x|)."),
    "square": (unary.square, "Return x^2."),
    "reciprocal": (unary.reciprocal, "Return 1 / (x + eps * sign(x)), sign(0) = +1."),
}
BINARY_STEMS: dict[str, tuple[Fn, str]] = {
    "add": (binary.add, "Return a + b."),
    "sub": (binary.sub, "Return a - b."),
    "mul": (binary.mul, "Return a * b."),
    "div": (binary.div, "Return a / (b + eps * sign(b)), sign(0) = +1."),
}
COMMUTATIVE_STEMS = frozenset({"add", "mul"})
#: Op metadata per stem (the `Op` fields; identities exact in floating point, as for the tensor ops).
STEM_METADATA: dict[str, dict[str, object]] = {
    "neg": {"involution": True},
    "abs": {"projection": True, "sign_blind": True},
    "log": {"sign_blind": True},
    "sqrt": {"sign_blind": True},
    "square": {"sign_blind": True},
    "sub": {"equal_args": "cancel"},
    "div": {"equal_args": "cancel"},
    "mul": {"equal_args": "square"},
}
NETWORK_STEMS = frozenset({"neg", "log", "sqrt", "add", "sub", "mul", "div"})


def _metadata(stem: str, prefix: str, shape_rule: str) -> dict[str, object]:
    meta: dict[str, object] = {"elementwise": True, "shape_rule": shape_rule, **STEM_METADATA.get(stem, {})}
    if meta.get("equal_args") == "square":  # f(x, x) = square(x) only where that op exists (no n_square)
        meta["equal_args"] = prefix + "square" if prefix == "s_" else ""
    return meta


def _register_all() -> None:
    for kind, prefix, group in ((S, "s_", "scalar"), (N, "n_", "network")):
        for stem, (fn, doc) in UNARY_STEMS.items():
            if kind == S or stem in NETWORK_STEMS:
                add_op(prefix + stem, fn, (kind,), kind, group, doc=doc, **_metadata(stem, prefix, "same"))
        for stem, (fn, doc) in BINARY_STEMS.items():
            if kind == S or stem in NETWORK_STEMS:
                add_op(prefix + stem, fn, (kind, kind), kind, group, commutative=stem in COMMUTATIVE_STEMS, doc=doc,
                       **_metadata(stem, prefix, "align"))


_register_all()
