"""Per-layer network statistics: the inputs of every proxy program.

A network is turned into ``{layer name -> {stat name -> tensor}}`` once per
(candidate, batch); proxy programs then only do tensor arithmetic on that.
Keys are layer names (module paths), never list positions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StatInfo:
    """Catalogue entry of one statistic."""

    name: str
    doc: str
    needs_bits: bool = False


STATS: dict[str, StatInfo] = {}


def register_stat(name: str, doc: str, needs_bits: bool = False) -> StatInfo:
    """Add a statistic to the catalogue (names are what proxy leaves refer to)."""
    if name in STATS:
        raise ValueError(f"statistic {name!r} is registered twice")
    info = StatInfo(name, doc, needs_bits)
    STATS[name] = info
    return info


register_stat("weight", "layer weight (full precision, as initialised or trained)")
register_stat("grad", "gradient of the cross-entropy loss w.r.t. the weight, on the batch")
register_stat("act", "layer output on the batch")
register_stat("act_grad", "gradient of the loss w.r.t. the layer output")
register_stat("virtual_grad", "synflow-style gradient: |W| network, all-ones input, d(sum out)/dW")
register_stat("hessian_diag", "Hutchinson estimate of the loss Hessian diagonal w.r.t. the weight")
register_stat("params", "number of weight parameters of the layer (0-d)")
register_stat("flops", "multiply-accumulates of the layer for one input (0-d)")
register_stat("bits", "weight bit-width of the layer, shaped like the weight", needs_bits=True)
register_stat("quant_weight", "weight after fake quantization at the layer's bits", needs_bits=True)
register_stat("quant_error", "quant_weight - weight", needs_bits=True)

#: Statistics every network gets, whatever the benchmark family.
BASE_STATS: tuple[str, ...] = ("weight", "grad", "act", "act_grad", "virtual_grad", "hessian_diag", "params", "flops")
#: Statistics that exist only when the candidate carries a bit assignment.
BIT_STATS: tuple[str, ...] = ("bits", "quant_weight", "quant_error")


class UnknownStatError(KeyError):
    """Raised for a statistic name that is not in the catalogue."""

    def __str__(self) -> str:
        return str(self.args[0])


def check_stat_names(names: list[str] | tuple[str, ...]) -> None:
    """Fail, listing the catalogue, if any name is not a known statistic."""
    unknown = [n for n in names if n not in STATS]
    if unknown:
        raise UnknownStatError(
            f"unknown statistic(s) {', '.join(map(repr, unknown))}; known statistics: {', '.join(sorted(STATS))}"
        )


@dataclass
class NetworkStats:
    """Statistics of one candidate network: per-layer tensors plus layer sizes.

    `layers` is ordered as the layers run in the forward pass.
    """

    layers: dict[str, dict[str, torch.Tensor]]
    params: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)

    def layer_names(self) -> list[str]:
        return list(self.layers)

    def available(self) -> set[str]:
        """Return the stat names present in every layer."""
        sets = [set(s) for s in self.layers.values()]
        return set.intersection(*sets) if sets else set()

    def param_vector(self) -> torch.Tensor:
        """Return per-layer parameter counts as a float64 vector in layer order."""
        return torch.tensor([float(self.params[n]) for n in self.layers], dtype=torch.float64)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "NetworkStats":
        """Return a copy with every tensor moved (and optionally cast)."""
        moved = {
            layer: {k: (v.to(device=device, dtype=dtype) if dtype is not None else v.to(device)) for k, v in stats.items()}
            for layer, stats in self.layers.items()
        }
        return NetworkStats(moved, dict(self.params), dict(self.flops))


def compute_stats(*args, **kwargs) -> NetworkStats:
    """Return a network's per-layer statistics on a batch; see `emq.stats_compute.compute_stats`.

    The code lives in `emq/stats_compute.py` (it needs the quantizers, which import
    this catalogue); this alias keeps `from emq.stats import compute_stats` working.
    """
    from emq.stats_compute import compute_stats as _compute

    return _compute(*args, **kwargs)
