"""The per-(layer, bits) table of a mixed-precision network: each layer quantized alone, at each bit-width, once.

A mixed-precision proxy is worth having when it is *separable*: one table of terms
t(l, b) computed once, after which any configuration c scores as sum_l f(t(l, c[l]))
and the best allocation under a size budget is an exact knapsack (`emq.apply`). This
module computes that table; `emq.stats.cache.layer_bits_table` caches it once per
(benchmark, batch, settings), and `iter_stats` hands a configuration's values to
programs as the 0-d statistics `lb_*` of each layer (`LAYER_BITS_STATS`).

For layer l at b bits, with every other layer's weights at full precision:

- `lb_weight_error`: ||Q_b(W_l) - W_l||^2 (float64);
- `lb_hessian_error`: Tr(H_l)/n_l x `lb_weight_error`, HAWQ-v2's term, the traces of the
  full-precision network on the statistics batch (`TRACE_SAMPLES` Hutchinson samples,
  seeded by the batch seed: the `hawq_v2` baseline is minus the sum of these terms);
- `lb_output_perturbation`: sum of squares of (layer l's output) - (its output in the
  reference network) on the evaluation images, divided by their number;
- `lb_loss_increase`: mean cross-entropy on the evaluation images minus the reference's;
- `lb_params`: n_l, the weight count.

The *reference* network is the benchmark's quantized network with every weight at full
precision: activations are quantized as the benchmark's configurations quantize them
(`act_bits`, per-tensor ranges calibrated on its calibration inputs; none when
`act_bits` is None), so a layer's terms measure its weights' share alone. Each
perturbed network recalibrates its activation ranges, as PTQ does for a configuration.
The evaluation images are the benchmark's calibration images with labels (those PTQ
already runs), else the statistics batch. Cost: |L| x |B| passes (a copy, one
calibration forward and one evaluation forward each) plus the traces, independent of
the number of configurations.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emq.bench.base import Batch
from emq.quant.fake_quant import quantize_weight, quantized_model, squared_quantization_error
from emq.quant.layers import MAX_WEIGHT_BITS, quantizable_layers
from emq.stats.catalogue import LAYER_BITS_STATS, NetworkStats
from emq.stats.hessian_trace import TRACE_SAMPLES, average_traces

TABLE_FORMAT = "emq-layer-bits/1"


@dataclass(frozen=True)
class LayerBitsTable:
    """`values[stat][layer][bits]` for every `LAYER_BITS_STATS` name, layer and bit choice; plain data, JSON.

    `lb_hessian_error` may be absent (`with_hessian` adds it): its traces cost more than
    the |L| x |B| passes (12 s vs 5 s on mq-digits, one core), and `qloss_layer_sum` needs none.
    """

    layers: tuple[str, ...]
    choices: tuple[int, ...]
    values: dict[str, dict[str, dict[int, float]]]
    params: dict[str, int]
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def passes(self) -> int:
        """Return the network passes the table cost (|L| x |B|), whatever the number of configurations."""
        return len(self.layers) * len(self.choices)

    def value(self, stat: str, layer: str, bits: int) -> float:
        """Return statistic `stat` of `layer` quantized alone at `bits` (KeyError naming what is missing)."""
        try:
            return self.values[stat][layer][int(bits)]
        except KeyError:
            raise KeyError(f"the per-(layer, bits) table has no {stat!r} for layer {layer!r} at {bits} bits "
                           f"(choices {list(self.choices)})") from None

    def network_stats(self, bits: Mapping[str, int], names: Sequence[str]) -> NetworkStats:
        """Return configuration `bits`'s statistics `names` (each a 0-d float32 tensor per layer), in layer order."""
        layers = {layer: {stat: torch.tensor(self.value(stat, layer, bits[layer]), dtype=torch.float32)
                          for stat in names} for layer in self.layers}
        return NetworkStats(layers, dict(self.params), {})

    def with_hessian(self, traces: Mapping[str, float]) -> "LayerBitsTable":
        """Return the table with `lb_hessian_error` = `traces[l]` (Tr(H_l)/n_l) x `lb_weight_error`."""
        errors = self.values["lb_weight_error"]
        hessian = {n: {b: float(traces[n]) * e for b, e in errors[n].items()} for n in self.layers}
        return dataclasses.replace(self, values={**self.values, "lb_hessian_error": hessian})

    def to_json(self) -> dict[str, Any]:
        """Return the table as JSON-ready data (bit keys as strings)."""
        return {"format": TABLE_FORMAT, "layers": list(self.layers), "choices": list(self.choices),
                "values": {s: {l: {str(b): v for b, v in row.items()} for l, row in table.items()}
                           for s, table in self.values.items()},
                "params": dict(self.params), "seconds": self.seconds, "settings": dict(self.settings)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "LayerBitsTable":
        """Return the table `to_json` wrote; ValueError naming the first thing that is not as written."""
        if not isinstance(data, Mapping) or data.get("format") != TABLE_FORMAT:
            raise ValueError(f"not an {TABLE_FORMAT} table")
        layers, choices = data.get("layers"), data.get("choices")
        if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
            raise ValueError("field 'layers' must be a list of names")
        if not isinstance(choices, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in choices):
            raise ValueError("field 'choices' must be a list of integers")
        raw = data.get("values")
        required = set(LAYER_BITS_STATS) - {"lb_hessian_error"}
        if not isinstance(raw, Mapping) or not required <= set(raw) <= set(LAYER_BITS_STATS):
            raise ValueError(f"field 'values' must hold {', '.join(sorted(required))} (and may hold lb_hessian_error)")
        values: dict[str, dict[str, dict[int, float]]] = {}
        for stat, table in raw.items():
            if not isinstance(table, Mapping) or set(table) != set(layers):
                raise ValueError(f"values of {stat!r} must have one row per layer")
            values[stat] = {}
            for layer, row in table.items():
                if not isinstance(row, Mapping) or set(row) != {str(b) for b in choices}:
                    raise ValueError(f"values of {stat!r} at {layer!r} must have one entry per bit choice")
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values()):
                    raise ValueError(f"values of {stat!r} at {layer!r} must be numbers")
                values[stat][layer] = {int(b): float(v) for b, v in row.items()}
        params = data.get("params")
        if not isinstance(params, Mapping) or set(params) != set(layers):
            raise ValueError("field 'params' must give each layer's weight count")
        return cls(tuple(layers), tuple(choices), values, {k: int(v) for k, v in params.items()},
                   float(data.get("seconds", 0.0)), dict(data.get("settings") or {}))


def compute_layer_bits_table(
    model: nn.Module,
    choices: Sequence[int],
    batch: Batch,
    *,
    evaluation: Batch | None = None,
    act_bits: int | None = 8,
    calib_inputs: torch.Tensor | None = None,
    seed: int = 0,
    trace_samples: int = TRACE_SAMPLES,
    hessian: bool = True,
    device: torch.device | str = "cpu",
) -> LayerBitsTable:
    """Return the per-(layer, bits) table of `model` (see the module docstring); `model` is never modified.

    `batch` is the statistics batch (Hessian traces); `evaluation` the images the output
    perturbation and loss increase are measured on (None: `batch`); `calib_inputs` the
    activation-calibration images (None: the evaluation images). `model` is on the CPU (as benchmarks
    build it); the passes run on `device`. `hessian=False` leaves out `lb_hessian_error` (and its traces).
    """
    start = time.perf_counter()
    choices = tuple(sorted({int(b) for b in choices}))
    if not choices:
        raise ValueError("the per-(layer, bits) table needs at least one bit choice")
    device = torch.device(device)
    evaluation = evaluation if evaluation is not None else batch
    calib = (calib_inputs if calib_inputs is not None else evaluation.inputs).cpu()
    fp_layers = quantizable_layers(model)
    names = list(fp_layers)
    full = {n: MAX_WEIGHT_BITS for n in names}
    x, y = evaluation.inputs.to(device), evaluation.labels.to(device)
    ref_loss, ref_out = _run(_network(model, full, act_bits, calib, device), names, x, y)

    values: dict[str, dict[str, dict[int, float]]] = {s: {n: {} for n in names} for s in LAYER_BITS_STATS
                                                      if s != "lb_hessian_error"}
    for name in names:
        weight = fp_layers[name].weight.detach()
        for b in choices:
            error = squared_quantization_error(weight, quantize_weight(weight, b))
            loss, out = _run(_network(model, {**full, name: b}, act_bits, calib, device), [name], x, y)
            values["lb_weight_error"][name][b] = error
            values["lb_output_perturbation"][name][b] = float(
                (out[name] - ref_out[name]).pow(2).sum() / max(int(x.shape[0]), 1))
            values["lb_loss_increase"][name][b] = loss - ref_loss
            values["lb_params"][name][b] = float(weight.numel())
    bad = [(s, n, b) for s, t in values.items() for n, row in t.items() for b, v in row.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(f"the per-(layer, bits) table is not finite at {bad[:3]}")
    settings = {"act_bits": act_bits, "trace_samples": trace_samples, "trace_seed": seed,
                "evaluation": evaluation.source, "evaluation_images": int(x.shape[0])}
    table = LayerBitsTable(tuple(names), choices, values, {n: int(fp_layers[n].weight.numel()) for n in names},
                           0.0, settings)
    if hessian:
        table = table.with_hessian(layer_traces(model, batch, seed, trace_samples, device))
    return dataclasses.replace(table, seconds=round(time.perf_counter() - start, 3))


def layer_traces(model: nn.Module, batch: Batch, seed: int, samples: int = TRACE_SAMPLES,
                 device: torch.device | str = "cpu") -> dict[str, float]:
    """Return HAWQ-v2's Tr(H_l)/n_l of `model` on `batch` (on a copy moved to `device`)."""
    device = torch.device(device)
    return average_traces(copy.deepcopy(model).to(device), batch.inputs.to(device), batch.labels.to(device),
                          samples, seed)


def _network(model: nn.Module, bits: dict[str, int], act_bits: int | None, calib: torch.Tensor,
             device: torch.device) -> nn.Module:
    """Return the quantized copy of `model` at `bits` (activation ranges recalibrated), eval mode, on `device`."""
    return quantized_model(model, bits, act_bits, calib).to(device).eval()


def _run(net: nn.Module, record: Sequence[str], x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """Return (mean cross-entropy, outputs of the layers `record` as float64) of `net` on (x, y)."""
    layers = quantizable_layers(net)
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            outputs.setdefault(name, output.detach().double())  # a layer run twice: its first output
        return fn

    handles = [layers[n].register_forward_hook(hook(n)) for n in record]
    try:
        with torch.no_grad():
            out = net(x)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            loss = float(F.cross_entropy(logits.double(), y))
    finally:
        for h in handles:
            h.remove()
    return loss, outputs
