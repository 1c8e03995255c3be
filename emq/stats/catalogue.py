"""Per-layer network statistics: the inputs of every proxy program.

A network is turned into ``{layer name -> {stat name -> tensor}}`` once per
(candidate, batch); proxy programs then only do tensor arithmetic on that.
Keys are layer names (module paths), never list positions.

Entries need not all carry the same statistics. Conv/linear layers carry the
layer statistics (`weight`, `grad`, `act`, ...). Transformers add entries of their
own (`TRANSFORMER_STATS`, ViT benchmarks only): `attn`, `attn_grad` and `head_out`
on the attention module (`blocks.3.attn`), `ln_out` on each LayerNorm
(`blocks.3.norm1`, `norm`), while `mlp_hidden` sits on the MLP's first linear layer
(`blocks.3.mlp.fc1`) beside its layer statistics. A program runs over the entries
that carry every statistic it uses (`Proxy.evaluate`), so `mean_layers(...attn...)`
aggregates over the attention modules, and a program mixing statistics that never
share an entry (`attn` with `weight`) has no entry to run on and fails as
`missing_stat`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from primitives.errors import UnknownNameError
from primitives.registry import Registry


@dataclass(frozen=True)
class StatInfo:
    """Catalogue entry of one statistic, with the properties the code reads (not name lists elsewhere).

    - `needs_bits`: exists only for candidates with a bit assignment;
    - `needs_loss`: a derivative of the loss (needs labels and a backward pass);
    - `needs_output`: needs the layer's output on the batch (forward hooks kept);
    - `layer_local`: a function of the layer alone (its weight and bits), not of the
      rest of the network or the batch, so one layer's bits change only its own value;
    - `family`: the benchmark family that has it ("vit"), or None for every family;
    - `needs_teacher`: needs the benchmark's distillation teacher (`Benchmark.teacher`);
    - `head_entry`: one matrix per network, on the classifier's entry (the last linear
      layer), not one per layer;
    - `memory`: the stored size per candidate, mean (largest) over the benchmark it was
      measured on (the structured statistics: `benchmarks/structured_stats_cost.py`);
    - `positional`: its entries are exchangeable positions of one tensor (weight-shaped or
      activation tensors), so a fixed sample of them stands in for it in a sketched search
      (`emq.sketch`); False for 0-d counts and for matrices whose structure ops read
      (kernels, correlations, attention maps, relation matrices);
    - `per_layer_bits`: read from the benchmark's per-(layer, bits) table (`emq.stats.layer_bits`), measured
      once per (layer, bit-width) with that layer alone quantized; a configuration's value at layer l is the
      table's at (l, its bits at l), a 0-d tensor, so any sum over layers of a function of these is separable;
    - `cost`: what computing it costs when that is not one statistics pass per candidate.
    """

    name: str
    doc: str
    needs_bits: bool = False
    needs_loss: bool = False
    needs_output: bool = False
    layer_local: bool = False
    family: str | None = None
    needs_teacher: bool = False
    head_entry: bool = False
    memory: str = ""
    positional: bool = False
    per_layer_bits: bool = False
    cost: str = ""


class UnknownStatError(UnknownNameError):
    """Raised for a statistic name that is not in the catalogue."""


STATS: Registry[StatInfo] = Registry("statistic", UnknownStatError)


def register_stat(name: str, doc: str, **properties: object) -> StatInfo:
    """Add a statistic to the catalogue (names are what proxy leaves refer to); `properties`: StatInfo fields."""
    return STATS.add(name, StatInfo(name, doc, **properties))  # type: ignore[arg-type]


register_stat("weight", "layer weight (full precision, as initialised or trained)", layer_local=True, positional=True)
register_stat("grad", "gradient of the cross-entropy loss w.r.t. the weight, on the batch", needs_loss=True,
              positional=True)
register_stat("act", "layer output on the batch", needs_output=True, positional=True)
register_stat("act_grad", "gradient of the loss w.r.t. the layer output", needs_loss=True, needs_output=True,
              positional=True)
register_stat("virtual_grad", "synflow-style gradient: |W| network, all-ones input, d(sum out)/dW", positional=True)
register_stat("hessian_diag", "Hutchinson estimate of the loss Hessian diagonal w.r.t. the weight", needs_loss=True,
              positional=True)
register_stat("params", "number of weight parameters of the layer (0-d)", layer_local=True)
register_stat("flops", "multiply-accumulates of the layer for one input (0-d)", layer_local=True)
register_stat("bits", "weight bit-width of the layer, shaped like the weight", needs_bits=True, layer_local=True,
              positional=True)
register_stat("quant_weight", "weight after fake quantization at the layer's bits", needs_bits=True, layer_local=True,
              positional=True)
register_stat("quant_error", "quant_weight - weight", needs_bits=True, layer_local=True, positional=True)
register_stat("attn", "(ViT) attention probabilities (softmax output), batch x heads x tokens x tokens; "
              "entry: the attention module, e.g. blocks.3.attn", family="vit")
register_stat("attn_grad", "(ViT) gradient of the loss w.r.t. attn; entry: the attention module", needs_loss=True,
              family="vit")
register_stat("head_out", "(ViT) per-head attention outputs attn @ v, batch x heads x tokens x head_dim; "
              "entry: the attention module", family="vit", positional=True)
register_stat("mlp_hidden", "(ViT) MLP hidden activations after the GELU, batch x tokens x hidden; "
              "entry: the MLP's first linear layer, e.g. blocks.3.mlp.fc1", family="vit", positional=True)
register_stat("logits", "network logits on the batch, batch x classes; entry: the classifier (last linear layer)",
              head_entry=True)
register_stat("relation", "sample-relation matrix of the features feeding the classifier, batch x batch, "
              "Frobenius-normalised (DisWOT); entry: the classifier", head_entry=True)
register_stat("semantic", "class-similarity matrix of the class activation maps, classes x classes, "
              "Frobenius-normalised (DisWOT); entry: the classifier", head_entry=True)
register_stat("teacher_logits", "the distillation teacher's logits on the same batch, batch x classes; entry: "
              "the student's classifier (benchmarks with a teacher)", head_entry=True, needs_teacher=True)
register_stat("teacher_relation", "the teacher's `relation` matrix on the same batch; entry: the student's "
              "classifier", head_entry=True, needs_teacher=True)
register_stat("teacher_semantic", "the teacher's `semantic` matrix; entry: the student's classifier",
              head_entry=True, needs_teacher=True)
register_stat("stage_relation", "sample-relation matrices at the network's 3 feature stages (stage outputs, or "
              "blocks at 1/3, 2/3 and all of the depth), 3 x batch x batch, each Frobenius-normalised "
              "(emq.stats.stage_features); entry: the classifier", head_entry=True)
register_stat("teacher_stage_relation", "the teacher's `stage_relation` (its 3 stage outputs) on the same batch; "
              "entry: the student's classifier", head_entry=True, needs_teacher=True)
register_stat("ln_out", "(ViT) LayerNorm output, batch x tokens x width; entry: the LayerNorm, e.g. blocks.3.norm1",
              family="vit", positional=True)
# Structured statistics (emq.stats.structured computes them; opt-in by --stats): small matrices, float32.
register_stat("act_codes_kernel", "B x B agreement counts of the binary activation codes (output > 0), NASWOT's "
              "Hamming kernel; entry: each activation module, e.g. stage1.cell0.edge0to1.relu", needs_output=True,
              memory="NB201: 42 KB (97 KB) at batch 16, 666 KB (1.6 MB) at 64")
register_stat("act_sign_patterns", "the distinct sample-wise activation patterns (a unit's B-bit code over the batch), "
              "U x ceil(B/24) float32 words (SWAP); entry: each activation module", needs_output=True,
              memory="NB201: 0.58 MB (2.1 MB) at batch 16, 3.9 MB (10.5 MB) at 64")
register_stat("act_gram", "B x B Gram matrix of the layer's flattened outputs", needs_output=True,
              memory="NB201: 45 KB (100 KB) at batch 16, 715 KB (1.6 MB) at 64")
register_stat("act_channel_corr", "C x C Pearson correlation of the output channels over the positions, the network "
              "run on the batch's first input alone (MeCo); layers with spatial or token positions", needs_output=True,
              memory="NB201: 318 KB (708 KB) at any batch")
register_stat("act_channel_cov", "C x C covariance of the output channels over batch and positions (AZ-NAS "
              "expressivity)", needs_output=True,
              memory="NB201: 318 KB (708 KB) at any batch")
register_stat("grad_batch_mean", "mean over 2 mini-batches (the batch's halves) of |dL/dW|, weight-shaped (ZiCo)",
              needs_loss=True,
              memory="NB201: 1.5 MB (4.2 MB), float32, at any batch", positional=True)
register_stat("grad_batch_std", "population std over the same 2 mini-batches of dL/dW, weight-shaped (ZiCo)",
              needs_loss=True,
              memory="NB201: 1.5 MB (4.2 MB), float32, at any batch", positional=True)
register_stat("hessian_grad", "H g: the loss Hessian times the loss gradient g = dL/dW on the batch, weight-shaped "
              "(GraSP)", needs_loss=True,
              memory="NB201: 0.75 MB (2.1 MB), 16-bit, at any batch", positional=True)
register_stat("jacobian_corr", "B x B Pearson correlation of the per-input Jacobians d(sum logits)/dx (jacov); "
              "entry: the classifier",
              memory="1 KB at batch 16, 16 KB at 64")

# Per-(layer, bits) statistics (emq.stats.layer_bits): one table per benchmark, opt-in by --stats or --separable.
_LB = dict(needs_bits=True, layer_local=True, per_layer_bits=True, cost="|L| x |B| passes, once")
register_stat("lb_weight_error", "||Q_b(W) - W||^2 of the layer's weight at its bits b (0-d)", **_LB)
register_stat("lb_hessian_error", "HAWQ-v2's term Tr(H)/numel x ||Q_b(W) - W||^2, H of the full-precision "
              "network on the statistics batch (0-d)",
              **{**_LB, "cost": "|L| x |B| passes + Hessian traces (128 Hutchinson samples per layer), once"})
register_stat("lb_output_perturbation", "squared L2 change of the layer's output on the calibration images "
              "(per image), that layer alone at its bits (0-d)", **_LB)
register_stat("lb_loss_increase", "cross-entropy increase on the calibration images, that layer alone at its "
              "bits, over the full-precision-weight network (0-d)", **_LB)
register_stat("lb_params", "the layer's weight count, from the per-(layer, bits) table (0-d)", **_LB)


def stats_with(**properties: object) -> frozenset[str]:
    """Return the names of the statistics whose properties equal `properties` (e.g. needs_loss=True)."""
    return frozenset(n for n, info in STATS.items()
                     if all(getattr(info, key) == value for key, value in properties.items()))


#: Statistics every network gets, whatever the benchmark family.
BASE_STATS: tuple[str, ...] = ("weight", "grad", "act", "act_grad", "virtual_grad", "hessian_diag", "params", "flops")
#: Statistics that exist only when the candidate carries a bit assignment.
BIT_STATS: tuple[str, ...] = tuple(n for n, info in STATS.items() if info.needs_bits and not info.per_layer_bits)
#: Statistics read from the per-(layer, bits) table (`emq.stats.layer_bits`); opt-in, never in the default set.
LAYER_BITS_STATS: tuple[str, ...] = tuple(n for n, info in STATS.items() if info.per_layer_bits)
#: Statistics of transformer internals; only networks with attention modules have them.
TRANSFORMER_STATS: tuple[str, ...] = tuple(n for n, info in STATS.items() if info.family == "vit")
#: Statistics a benchmark family adds to BASE_STATS (CNN families add none of the transformer ones).
FAMILY_STATS: dict[str, tuple[str, ...]] = {"vit": TRANSFORMER_STATS}


def check_stat_names(names: list[str] | tuple[str, ...]) -> None:
    """Fail, listing the catalogue, if any name is not a known statistic."""
    unknown = [n for n in names if n not in STATS]
    if unknown:
        raise UnknownStatError(
            f"unknown statistic(s) {', '.join(map(repr, unknown))}; known statistics: {', '.join(sorted(STATS))}"
        )


@dataclass
class NetworkStats:
    """Statistics of one candidate network: per-entry tensors plus entry sizes.

    `layers` is ordered as the entries first run in the forward pass. `params` is
    the weight count of an entry (a layer's weight; an attention module's qkv and
    proj weights; a LayerNorm's scale) and weights `wmean_layers`; `flops` the
    multiply-accumulates per input (an attention module's: its two token matmuls).
    """

    layers: dict[str, dict[str, torch.Tensor]]
    params: dict[str, int] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)

    def layer_names(self) -> list[str]:
        return list(self.layers)

    def available(self) -> set[str]:
        """Return the stat names some entry carries: those a program may use (it runs over the entries having them)."""
        return set().union(*(s.keys() for s in self.layers.values()))

    def common(self) -> set[str]:
        """Return the stat names every entry carries."""
        sets = [set(s) for s in self.layers.values()]
        return set.intersection(*sets) if sets else set()

    def param_vector(self) -> torch.Tensor:
        """Return per-entry parameter counts as a float64 vector in layer order (0 for an entry without a count)."""
        return torch.tensor([float(self.params.get(n, 0)) for n in self.layers], dtype=torch.float64)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "NetworkStats":
        """Return a copy with every tensor moved (and optionally cast)."""
        moved = {
            layer: {k: (v.to(device=device, dtype=dtype) if dtype is not None else v.to(device)) for k, v in stats.items()}
            for layer, stats in self.layers.items()
        }
        return NetworkStats(moved, dict(self.params), dict(self.flops))
