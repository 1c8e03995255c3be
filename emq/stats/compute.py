"""Compute the per-layer statistics of one network on one batch (`compute_stats`).

Conventions every statistic follows (the cache key's CODE_VERSION changes with them):

- The network that is *run* is a private copy: `quantized_model(...)` when a bit
  assignment is given (fake-quantized weights, activation quantizers calibrated on
  the calibration inputs), else `copy.deepcopy(model)`. The caller's model is never
  modified.
- Everything runs in eval mode (dropout off). BatchNorm uses running statistics where
  the network keeps them (the trained MQ networks); randomly initialised networks built
  with `track_running_stats=False` (NB201, the ResNet-56 teacher) normalise with the
  batch's own statistics, the state at the start of training.
- Loss-derived statistics (`grad`, `act_grad`, `hessian_diag`) are derivatives of
  the mean cross-entropy on the batch of the network that is run; with bits, the
  gradients w.r.t. the quantized weights are the straight-through gradients.
- `weight` is the full-precision weight of the caller's model; `quant_weight` the
  weight the quantized network runs with; `quant_error = quant_weight - weight`.
- `virtual_grad` (SynFlow): a copy whose every parameter is replaced by its absolute
  value (weights quantized first when bits are given), BatchNorm bypassed
  (`nn.Identity`), activation quantizers absent, run in float64 on one all-ones input
  of the batch's input shape; the gradient of the summed output w.r.t. each weight.
- Stored tensors are detached CPU copies in `store_dtype`, with two exceptions:
  `params` / `flops` are float32 0-d tensors (float16 overflows at 65504), and
  float16 storage means *16-bit* storage: a tensor is stored as float16 when float16
  represents it (no overflow, at most 1% of its non-zero entries below float16's
  normal range 6e-5), else as bfloat16 (float32's range, about 3 significant
  digits). Gradients of the mean loss (often 1e-9..1e-4) and SynFlow gradients
  (often 1e10) would otherwise turn into zeros or infs, and `log_abs`,
  `reciprocal` ... would see those instead of the values.
- Transformer statistics (`TRANSFORMER_STATS`, networks with attention modules
  only; `emq.stats.transformer` says where each is recorded and stored) come from
  the same forward pass: `attn` and `head_out` per attention module, `mlp_hidden`
  on each MLP's first layer, `ln_out` per LayerNorm; `attn_grad` from the same
  backward pass as `grad`. Their entries join the layers in forward order.
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emq.bench.base import Batch
from emq.diswot import diswot_matrices
from emq.stats.stage_features import stage_relations
from emq.quant.fake_quant import quantized_model
from emq.quant.layers import check_bit_assignment, quantizable_layers
from emq.stats import (
    BASE_STATS, BIT_STATS, FAMILY_STATS, LAYER_BITS_STATS, STATS, TRANSFORMER_STATS, NetworkStats, check_stat_names,
    stats_with,
)
from emq.stats.structured import STRUCTURED_STATS, add_structured_stats
from emq.stats.synflow import network_logits, virtual_grads
from emq.stats.transformer import HookPoint, attention_macs, entry_params, has_transformer_parts, hook_points
from emq.stats.teacher import Teacher

#: Largest finite float16 and smallest normal float16.
F16_MAX = 65504.0
F16_TINY = 2.0**-14
#: Fraction of non-zero entries allowed below float16's normal range before a tensor is stored as bfloat16 instead.
F16_SUBNORMAL_FRACTION = 0.01

_LOSS_STATS = stats_with(needs_loss=True)
_OUTPUT_STATS = stats_with(needs_output=True)


def applicable_stats(has_bits: bool, family: str | None = None) -> tuple[str, ...]:
    """Return every statistic a network gets: BASE_STATS, plus BIT_STATS when it carries bits, plus its family's
    (`FAMILY_STATS`: the transformer statistics for "vit"; none for CNN families)."""
    return BASE_STATS + (BIT_STATS if has_bits else ()) + FAMILY_STATS.get(family or "", ())


def offered_stats(has_bits: bool, family: str | None = None, has_teacher: bool = False) -> tuple[str, ...]:
    """Return every statistic that can be asked for: the default set (`applicable_stats`), the classifier-entry
    ones (`logits`, `relation`, `semantic`), the teacher's when the benchmark has a teacher, the structured ones
    (`emq.stats.structured`) and, with bits, the per-(layer, bits) ones (`LAYER_BITS_STATS`) (opt-in by --stats)."""
    head = tuple(n for n, info in STATS.items() if info.head_entry and (has_teacher or not info.needs_teacher))
    return applicable_stats(has_bits, family) + head + STRUCTURED_STATS + (LAYER_BITS_STATS if has_bits else ())


def prepare_network(
    model: nn.Module,
    bits: dict[str, int] | None,
    *,
    act_bits: int | None = 8,
    calib_inputs: torch.Tensor | None = None,
    fallback_calib: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Return the private copy of `model` that statistics and baselines run: quantized when `bits` is given, eval mode, on `device`.

    Activation ranges are calibrated on `calib_inputs`, else on `fallback_calib` (the scored batch).
    Only the quantizable layers' weights require gradients in the copy.
    """
    if bits is not None:
        check_bit_assignment(model, bits)
        calib = calib_inputs if calib_inputs is not None else fallback_calib
        if act_bits is not None and calib is not None:
            calib = calib.to(_model_device(model))
        net = quantized_model(model, bits, act_bits, calib)
    else:
        net = copy.deepcopy(model)
    net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    for layer in quantizable_layers(net).values():
        layer.weight.requires_grad_(True)
    for m in net.modules():  # in-place activations would overwrite the layer outputs we record
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    return net


def compute_stats(
    model: nn.Module,
    batch: Batch,
    bits: dict[str, int] | None,
    stat_names: Iterable[str],
    *,
    act_bits: int | None = 8,
    calib_inputs: torch.Tensor | None = None,
    hessian_samples: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    store_dtype: torch.dtype = torch.float32,
    teacher: Teacher | None = None,
) -> NetworkStats:
    """Return the requested statistics of every conv/linear layer (and transformer entry) of `model` on `batch`.

    See the module docstring for what each statistic is. Only the requested ones are
    computed (no backward pass when no loss-derived statistic is asked for). `params`
    and `flops` dictionaries are always filled. Entries are ordered as they first run.
    Transformer statistics on a network without attention modules raise ValueError.
    """
    names = tuple(dict.fromkeys(stat_names))
    _check_request(model, names, bits, hessian_samples, teacher)
    device = torch.device(device)
    fp_layers = quantizable_layers(model)
    net = prepare_network(model, bits, act_bits=act_bits, calib_inputs=calib_inputs,
                          fallback_calib=batch.inputs, device=device)
    layers = quantizable_layers(net)
    inputs = batch.inputs.to(device)
    labels = batch.labels.to(device)

    wanted = set(names) - set(STRUCTURED_STATS)  # those run their own passes (emq.stats.structured)
    points = hook_points(net, wanted)
    run = _run_network(net, layers, inputs, labels, wanted, hessian_samples, seed, points)
    ran = [n for n in run.order if n in layers]
    order = run.entries + [n for n in layers if n not in ran]
    if len(ran) < len(layers):
        warnings.warn(f"layer(s) {[n for n in layers if n not in ran]} never ran on the batch; "
                      "their flops are 0 and their act/act_grad are empty", stacklevel=2)
    virtual = virtual_grads(model, bits, inputs.shape[1:], device) if "virtual_grad" in wanted else {}

    out: dict[str, dict[str, torch.Tensor]] = {}
    params: dict[str, int] = {}
    flops: dict[str, int] = {}
    for name in order:
        if name not in layers:  # a transformer entry (attention module, LayerNorm)
            params[name] = entry_params(net, name)
            flops[name] = int(run.flops.get(name, 0))
            out[name] = {stat: _store(run.transformer[stat][name], store_dtype)
                         for stat in names if name in run.transformer.get(stat, {})}
            continue
        fp_weight = fp_layers[name].weight.detach()
        params[name] = int(fp_weight.numel())
        flops[name] = int(run.flops.get(name, 0))
        out[name] = _layer_tensors(name, names, run, fp_weight, layers[name].weight.detach(), bits, virtual,
                                   params[name], flops[name], store_dtype)
    out = add_structured_stats(net, layers, inputs, labels, names, out, params, flops,
                               lambda t: _store(t, store_dtype), network_logits)
    wanted_head = [n for n in names if STATS[n].head_entry]
    if wanted_head:
        head = [n for n in order if n in layers and isinstance(layers[n], nn.Linear)][-1]
        out[head].update({k: _store(v, store_dtype)
                          for k, v in head_stats(net, inputs, wanted_head, teacher, device).items()})
    return NetworkStats(out, params, flops)


def _check_request(model: nn.Module, names: tuple[str, ...], bits: dict[str, int] | None, hessian_samples: int,
                   teacher: Teacher | None) -> None:
    """Fail (ValueError naming the statistics) when `model`, its bits or the benchmark cannot give `names`."""
    check_stat_names(names)
    table = [n for n in names if STATS[n].per_layer_bits]
    if table:
        raise ValueError(f"statistic(s) {table} come from the benchmark's per-(layer, bits) table "
                         "(emq.stats.cache.layer_bits_table / iter_stats), not from one network's pass")
    needs_bits = [n for n in names if STATS[n].needs_bits]
    if bits is None and needs_bits:
        raise ValueError(f"statistic(s) {needs_bits} need a bit assignment, but the candidate has none")
    if hessian_samples < 1 and "hessian_diag" in names:
        raise ValueError(f"hessian_samples must be >= 1, got {hessian_samples}")
    if not quantizable_layers(model):
        raise ValueError("the model has no conv/linear layer to compute statistics for")
    lacking = [n for n in names if STATS[n].needs_teacher]
    if lacking and teacher is None:
        raise ValueError(f"statistic(s) {lacking} need a benchmark with a distillation teacher; this one has none")
    transformer = [n for n in names if n in TRANSFORMER_STATS]
    if transformer and not has_transformer_parts(model):
        raise ValueError(f"statistic(s) {transformer} exist only for transformers (attention modules); "
                         "this network has none")


def _layer_tensors(name: str, names: Sequence[str], run: _Run, fp_weight: torch.Tensor, q_weight: torch.Tensor,
                   bits: dict[str, int] | None, virtual: Mapping[str, torch.Tensor], n_params: int, n_flops: int,
                   store_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Return one conv/linear layer's requested statistics, stored in `store_dtype` (structured ones come later)."""
    tensors: dict[str, torch.Tensor] = {}
    for stat in names:
        if stat == "weight":
            tensors[stat] = _store(fp_weight, store_dtype)
        elif stat == "grad":
            tensors[stat] = _store(run.grads[name], store_dtype)
        elif stat == "act":
            tensors[stat] = _store(run.acts.get(name, torch.empty(0)), store_dtype)
        elif stat == "act_grad":
            tensors[stat] = _store(run.act_grads.get(name, torch.empty(0)), store_dtype)
        elif stat == "hessian_diag":
            tensors[stat] = _store(run.hessian[name], store_dtype)
        elif stat == "virtual_grad":
            tensors[stat] = _store(virtual[name], store_dtype)
        elif stat == "params":
            tensors[stat] = torch.tensor(float(n_params), dtype=torch.float32)
        elif stat == "flops":
            tensors[stat] = torch.tensor(float(n_flops), dtype=torch.float32)
        elif stat == "bits":
            # A 0-d value expanded to the weight's shape: one element of storage, on disk too.
            tensors[stat] = torch.tensor(float(bits[name]), dtype=store_dtype).expand(fp_weight.shape)  # type: ignore[index]
        elif stat == "quant_weight":
            tensors[stat] = _store(q_weight, store_dtype)
        elif stat == "quant_error":
            tensors[stat] = _store(q_weight.cpu() - fp_weight.cpu(), store_dtype)
        elif stat in TRANSFORMER_STATS:
            if name in run.transformer.get(stat, {}):  # mlp_hidden, on an MLP's first layer
                tensors[stat] = _store(run.transformer[stat][name], store_dtype)
        elif STATS[stat].head_entry or stat in STRUCTURED_STATS:
            continue  # added to the classifier's entry / by emq.stats.structured below
        else:  # a statistic registered in the catalogue without code here
            raise NotImplementedError(f"no code computes statistic {stat!r}")
    return tensors


def head_stats(net: nn.Module, inputs: torch.Tensor, wanted: Sequence[str], teacher: Teacher | None,
               device: torch.device) -> dict[str, torch.Tensor]:
    """Return the network-level statistics (logits, DisWOT and stage relation matrices; the teacher's, on the same batch)."""
    with torch.no_grad():
        out = _network_matrices(net, inputs, wanted, prefix="")
        if teacher is not None and any(STATS[n].needs_teacher for n in wanted):
            out.update(_network_matrices(teacher.model(device), teacher.inputs(inputs), wanted, prefix="teacher_"))
    return {k: v for k, v in out.items() if k in wanted}


def _network_matrices(net: nn.Module, inputs: torch.Tensor, wanted: Sequence[str],
                      prefix: str) -> dict[str, torch.Tensor]:
    """Return `net`'s wanted logits / relation / semantic / stage_relation, named with `prefix` ("" or "teacher_")."""
    out: dict[str, torch.Tensor] = {}
    if prefix + "logits" in wanted:
        out[prefix + "logits"] = network_logits(net, inputs).detach()
    if {prefix + "relation", prefix + "semantic"} & set(wanted):
        matrices = diswot_matrices(net, inputs)
        out.update({prefix + "relation": matrices.relation, prefix + "semantic": matrices.semantic})
    if prefix + "stage_relation" in wanted:
        out[prefix + "stage_relation"] = stage_relations(net, inputs)
    return out


class _Run:
    """What one forward/backward pass recorded, keyed by layer name (transformer statistics: by stat, then entry)."""

    def __init__(self) -> None:
        self.order: list[str] = []  # layers, as they first ran
        self.entries: list[str] = []  # layers and transformer entries, as they first ran
        self.transformer: dict[str, dict[str, torch.Tensor]] = {}
        self.flops: dict[str, int] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.acts: dict[str, torch.Tensor] = {}
        self.act_grads: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.hessian: dict[str, torch.Tensor] = {}


def _run_network(
    net: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
    wanted: set[str], hessian_samples: int, seed: int, points: Sequence[HookPoint] = (),
) -> _Run:
    run = _Run()
    keep_outputs = bool(wanted & _OUTPUT_STATS)
    need_loss = bool(wanted & _LOSS_STATS)
    full_batch = keep_outputs or bool(points)

    def hook(name: str):
        def fn(module: nn.Module, _args, output: torch.Tensor):
            if name in run.flops:  # a layer used twice: count its work, keep its first output
                run.flops[name] += _macs_per_input(module, output)
                return None
            run.order.append(name)
            if name not in run.entries:
                run.entries.append(name)
            run.flops[name] = _macs_per_input(module, output)
            if keep_outputs:
                run.outputs[name] = output
                # Downstream ops see a clone, so an in-place op cannot rewrite the recorded output
                # (and d loss / d output stays the gradient w.r.t. this layer's own output).
                return output.clone()
            return None
        return fn

    attn_in_graph = "attn_grad" in wanted

    def point_hook(point: HookPoint):
        def fn(module: nn.Module, _args, output: torch.Tensor):
            recorded = run.transformer.setdefault(point.stat, {})
            if point.entry in recorded:  # a module used twice: keep its first output
                return None
            if point.entry not in run.entries:
                run.entries.append(point.entry)
            if point.stat in ("attn", "head_out") and point.entry not in run.flops:
                run.flops[point.entry] = attention_macs(tuple(output.shape), module_head_dim(point.entry))
            if point.stat == "attn" and attn_in_graph:
                recorded[point.entry] = output
                return output.clone()  # as for layer outputs: d loss / d recorded tensor is attn_grad
            recorded[point.entry] = output.detach()
            return None
        return fn

    def module_head_dim(entry: str) -> int:
        return int(net.get_submodule(entry).head_dim)

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    handles += [p.module.register_forward_hook(point_hook(p)) for p in points]
    try:
        if not need_loss:
            with torch.no_grad():
                network_logits(net, inputs if full_batch else inputs[:1])
            run.acts = {n: o.detach() for n, o in run.outputs.items()}
            return run
        _loss_gradients(run, net, layers, inputs, labels, wanted, hessian_samples, seed)
    finally:
        for h in handles:
            h.remove()
    return run


def _loss_gradients(run: _Run, net: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor,
                    labels: torch.Tensor, wanted: set[str], hessian_samples: int, seed: int) -> None:
    """Fill `run`'s loss-derived statistics (grad, act_grad, attn_grad, hessian_diag) from one backward pass."""
    attn_in_graph = "attn_grad" in wanted
    with torch.enable_grad():
        loss = F.cross_entropy(network_logits(net, inputs), labels)
        weights = [layer.weight for layer in layers.values()]
        want_w = bool(wanted & {"grad", "hessian_diag"})
        out_names = [n for n in run.order if "act_grad" in wanted]
        attn = run.transformer.get("attn", {}) if attn_in_graph else {}
        attn_names = list(attn)
        targets = ((weights if want_w else []) + [run.outputs[n] for n in out_names]
                   + [attn[n] for n in attn_names])
        grads = torch.autograd.grad(loss, targets, create_graph="hessian_diag" in wanted, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
        names = list(layers)
        n_w = len(weights) if want_w else 0
        if want_w:
            run.grads = {n: g.detach() for n, g in zip(names, grads[:n_w])}
        run.act_grads = {n: g.detach() for n, g in zip(out_names, grads[n_w:n_w + len(out_names)])}
        if attn_in_graph:
            attn_grads = grads[n_w + len(out_names):]
            run.transformer["attn_grad"] = {n: g.detach() for n, g in zip(attn_names, attn_grads)}
            run.transformer["attn"] = {n: t.detach() for n, t in attn.items()}
        run.acts = {n: o.detach() for n, o in run.outputs.items()} if "act" in wanted else {}
        if "hessian_diag" in wanted:
            run.hessian = _hutchinson_diag(names, weights, grads[: len(weights)], hessian_samples, seed)


def _hutchinson_diag(
    names: list[str], weights: list[torch.Tensor], grads: list[torch.Tensor], samples: int, seed: int,
) -> dict[str, torch.Tensor]:
    """Return E[z * Hz] over `samples` Rademacher vectors z (drawn on CPU from `seed`, so devices agree)."""
    gen = torch.Generator().manual_seed(seed)
    diag = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    live = [i for i, g in enumerate(grads) if g.requires_grad]
    for _ in range(samples):
        zs = [(torch.randint(0, 2, w.shape, generator=gen, dtype=torch.int8) * 2 - 1).to(w.device, w.dtype) for w in weights]
        if not live:
            continue
        hz = torch.autograd.grad([grads[i] for i in live], [weights[i] for i in live],
                                 grad_outputs=[zs[i] for i in live], retain_graph=True, allow_unused=True)
        for i, h in zip(live, hz):
            if h is not None:
                diag[i] += (zs[i] * h).detach().double()
    return {n: (d / samples).to(w.dtype) for n, d, w in zip(names, diag, weights)}


def _macs_per_input(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-accumulates for one input: each output element costs one weight row (conv: in_c/groups*kh*kw; linear: in)."""
    per_sample = output.numel() // max(int(output.shape[0]), 1) if output.dim() > 1 else output.numel()
    weight = module.weight
    return int(per_sample * (weight.numel() // weight.shape[0]))


def _store(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return a detached, compact CPU copy in `dtype` (bfloat16 instead when float16 would lose the values)."""
    t = t.detach()
    if dtype == torch.float16 and t.is_floating_point() and t.numel():
        if not _fits_float16(t):
            dtype = torch.bfloat16
    return t.to(device="cpu", dtype=dtype).clone(memory_format=torch.contiguous_format)


def _fits_float16(t: torch.Tensor) -> bool:
    a = t.abs().float()
    finite = torch.isfinite(a)
    if bool(((a > F16_MAX) & finite).any()):
        return False
    nonzero = (a > 0) & finite
    n = int(nonzero.sum())
    return n == 0 or int(((a < F16_TINY) & nonzero).sum()) <= F16_SUBNORMAL_FRACTION * n


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
