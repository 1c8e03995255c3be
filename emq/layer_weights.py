"""Learned weights of a proxy's per-layer terms (`emq fit`), keyed so they transfer across architectures.

A program's layer aggregation (`sum_layers(t)`, `mean_layers(t)`, ...) treats every
layer's term t alike. ParZC (node-wise zero-cost proxies) observes that layers contribute
unequally; `emq fit` learns one weight per layer *key* and the aggregation then reads
w_key(layer) * t(layer). Keys are one of:

- `name`: the layer's own name (`stage2.cell4.edge1to3.conv`). Exact, but a layer absent
  from the candidates the weights were fitted on keeps weight `default`.
- `type` (default): the layer's position type, i.e. its name with block and stage indices
  replaced by `#`, plus its depth bucket: which of `buckets` equal slices of the
  network's layer order it sits in. `blocks.5.attn.qkv`, the 6th of 12 blocks, becomes
  `blocks.#.attn.qkv@1` with 3 buckets, and the same layer type at the same relative
  depth of a 14-block subnet shares its weight. This is how weights transfer across
  candidates of different depth.

An index is a dotted component that is an integer (`blocks.5`) or a container word
followed by an integer (`stage2`, `cell4`, `block3`, `layer1`); other components with
digits (`fc1`, `edge1to3`) name a layer's role and are kept. The weights are stored in the proxy file (`layer_weights`, an
optional field of `emq-proxy/1`), and every scorer applies them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from primitives.errors import EMQUserError

LAYER_WEIGHTS_FORMAT = "emq-layer-weights/1"
KEY_MODES = ("type", "name")
#: At most this many keys in a file (a proxy file stays small; parsing stays linear).
MAX_KEYS = 4096
_INDEXED = re.compile(r"^(stage|cell|block|layer|)\d+$")


class LayerWeightsError(EMQUserError, ValueError):
    """A proxy file's `layer_weights` field is malformed."""


def layer_type(name: str) -> str:
    """Return `name` with its block/stage indices replaced by '#' (`stage2.cell4.edge1to3.conv` -> `stage#.cell#.edge1to3.conv`)."""
    return ".".join(_INDEXED.sub(lambda m: f"{m.group(1)}#", part) for part in name.split("."))


def layer_keys(names: Sequence[str], mode: str = "type", buckets: int = 3) -> list[str]:
    """Return the key of each layer of one network, `names` in the network's layer order."""
    if mode == "name":
        return list(names)
    count = max(len(names), 1)
    return [f"{layer_type(n)}@{min(buckets - 1, (i * buckets) // count)}" for i, n in enumerate(names)]


@dataclass(frozen=True)
class LayerWeights:
    """One weight per layer key; layers whose key was never fitted get `default` (1.0: the unfitted program)."""

    weights: Mapping[str, float]
    mode: str = "type"
    buckets: int = 3
    default: float = 1.0
    fitted: Mapping[str, Any] = field(default_factory=dict)  # how they were fitted (free-form, recorded)

    def for_layers(self, names: Sequence[str]) -> np.ndarray:
        """Return the weight of each layer of one network (`names` in layer order)."""
        return np.array([self.weights.get(k, self.default) for k in layer_keys(names, self.mode, self.buckets)],
                        dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"format": LAYER_WEIGHTS_FORMAT, "mode": self.mode, "buckets": self.buckets, "default": self.default,
                "weights": dict(sorted(self.weights.items())), "fitted": dict(self.fitted)}

    @classmethod
    def from_json(cls, data: Any, source: str = "<json>") -> "LayerWeights":
        """Validate and read the `layer_weights` object of a proxy file; errors name the file and field."""
        where = f"{source}: field 'layer_weights'"
        if not isinstance(data, dict):
            raise LayerWeightsError(f"{where} must be an object (written by `emq fit`)")
        if data.get("format") != LAYER_WEIGHTS_FORMAT:
            raise LayerWeightsError(f"{where}.format is {data.get('format')!r}; expected {LAYER_WEIGHTS_FORMAT!r}")
        mode, buckets, default = data.get("mode"), data.get("buckets"), data.get("default", 1.0)
        if mode not in KEY_MODES:
            raise LayerWeightsError(f"{where}.mode is {mode!r}; choose one of {', '.join(KEY_MODES)}")
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 64:
            raise LayerWeightsError(f"{where}.buckets must be an integer in 1..64, got {buckets!r}")
        if not _finite_number(default):
            raise LayerWeightsError(f"{where}.default must be a finite number, got {default!r}")
        weights = data.get("weights")
        if not isinstance(weights, dict) or len(weights) > MAX_KEYS:
            raise LayerWeightsError(f"{where}.weights must be an object of at most {MAX_KEYS} key: number pairs")
        bad = [k for k, v in weights.items() if not _finite_number(v)]
        if bad:
            raise LayerWeightsError(f"{where}.weights[{bad[0]!r}] must be a finite number")
        fitted = data.get("fitted", {})
        if not isinstance(fitted, dict):
            raise LayerWeightsError(f"{where}.fitted must be an object")
        return cls({str(k): float(v) for k, v in weights.items()}, mode, buckets, float(default), fitted)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
