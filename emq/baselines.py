"""Hand-designed proxies from the literature, registered by name, scored like any proxy.

Every baseline gives one float per candidate, and a higher score predicts a higher
accuracy (quantities the literature calls "lower is better" are negated). Two kinds:

- *program* baselines are proxy formulas over the cached statistics (`emq.stats`),
  evaluated exactly like discovered programs;
- *model* baselines need the network itself (`fn(net, batch, bits, ctx) -> float`):
  they run on the same network the statistics come from (a private copy, quantized
  when the candidate has bits, eval mode) and the same fixed batch, and their
  per-candidate scores are cached on disk next to the statistics.

On a mixed-precision benchmark every candidate shares one full-precision network, so
weight-only baselines (`params`, `flops`) are constant there; that is their true
value, and the fitness code reports it as a degenerate (constant) scorer.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from primitives.errors import EMQUserError, Registry, UnknownNameError
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from emq.atomic import write_json_atomic
from emq.baselines_structured import REFERENCES
from emq.bench.base import Batch, Benchmark, Candidate
from emq.paths import cache_dir
from emq.proxy import Proxy, ProxyEvaluationError
from emq.quant.layers import quantizable_layers
from emq.stats_cache import (
    StatsConfig, bench_fields, calibration_inputs, config_key, iter_stats, safe_name,
)
from emq.stats_compute import network_logits, prepare_network, virtual_grads
from emq.teacher import Teacher

MODEL_SCORES_FORMAT = "emq-baseline-scores/1"


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
) -> Any:
    """Register a baseline under `name`.

    With `formula`, registers a program baseline at once and returns it; without,
    returns a decorator for a model baseline `fn(net, batch, bits, ctx) -> float`.
    """

    def add(fn: ModelBaselineFn | None) -> Baseline:
        text = doc
        if not text and fn is not None and fn.__doc__:
            text = fn.__doc__.strip().splitlines()[0]
        return BASELINES.add(name, Baseline(name, tuple(families), text, formula, fn, version, trivial, needs_teacher))

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


def trivial_baselines(bench: Benchmark) -> list[str]:
    """Return the trivial predictors of `bench` (size, FLOPs, bit counts, quantized loss, each arch hyperparameter)."""
    return [b.name for b in list_baselines(bench.family) if b.trivial] + arch_baseline_names(bench)


def is_trivial(name: str) -> bool:
    """True for a trivial predictor's name (a registered trivial baseline or an `arch:` one)."""
    return name.startswith(ARCH_PREFIX) or (name in BASELINES and BASELINES[name].trivial)


# -------------------------------------------------------------- program kind
register_baseline("params", doc="number of weights", formula="sum_layers(numel(weight))", trivial=True)
register_baseline("flops", doc="multiply-accumulates for one input", formula="sum_layers(mean(flops))", trivial=True)
register_baseline("bit_sum", ("mq",), "sum of the layers' weight bit-widths", formula="sum_layers(mean(bits))",
                  trivial=True)
register_baseline("bparams", ("mq",), "bit-weighted parameter count (model size in bits)",
                  formula="sum_layers(sum(bits))", trivial=True)
# BOPs = MACs x weight bits x activation bits; the activation bits are one constant per
# benchmark, so they are left out (rank correlation is scale free).
register_baseline("bops", ("mq",), "bit operations: MACs x weight bits (x the constant activation bits)",
                  formula="sum_layers(mean(mul(flops, bits)))", trivial=True)
register_baseline("synflow", doc="SynFlow (Tanaka et al. 2020): sum |W * d(sum out)/dW| of the |W| network",
                  formula="sum_layers(sum(abs(mul(weight, virtual_grad))))")
register_baseline("snip", doc="SNIP (Lee et al. 2019): sum |W * dL/dW|",
                  formula="sum_layers(sum(abs(mul(weight, grad))))")
register_baseline("grad_norm", doc="sum over layers of the L2 norm of dL/dW", formula="sum_layers(l2(grad))")
# HAWQ (Dong et al. 2019/2020): a layer's sensitivity is its Hessian trace (here the
# mean of the Hutchinson diagonal) times its squared quantization perturbation; a
# larger total perturbation predicts a lower accuracy, hence the negation.
register_baseline("hawq", ("mq",), "HAWQ-style: -sum_layers(mean(Hessian diag) * ||Q(W) - W||^2)",
                  formula="n_neg(sum_layers(s_mul(mean(hessian_diag), sum(square(quant_error)))))")
# Mean Shannon entropy (nats) of the attention rows, averaged over the attention modules: per
# module -sum(p log p) / sum(p), and sum(p) is the number of rows (each row sums to 1).
# Sign: higher entropy scores higher. Attention that concentrates on few tokens (entropy
# collapse, Zhai et al. ICML 2023) marks networks that train badly, so a more uniform
# attention at initialisation is read as the better sign; the tables show which way it ranks.
register_baseline("attn_entropy", ("vit",), "mean entropy of the attention distributions (higher = more uniform)",
                  formula="mean_layers(s_neg(s_div(sum(mul(attn, log_abs(attn))), sum(attn))))")


# ---------------------------------------------------------------- model kind
#: Modules whose outputs give NASWOT's binary codes (the sign pattern of each unit).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish)


@register_baseline("nwot", doc="NASWOT (Mellor et al. 2021): log|det K| of the Hamming kernel of binary activation codes")
def nwot(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Return log|det K|, K[i, j] = units on which inputs i and j agree in being active (> 0).

    Codes come from every call of an activation module (ReLU, GELU, ...); a network
    without activation modules (functional activations) uses its conv/linear outputs.
    """
    modules = [m for m in net.modules() if isinstance(m, ACTIVATIONS)]
    if not modules:
        modules = list(quantizable_layers(net).values())
    n = batch.inputs.shape[0]
    kernel = torch.zeros(n, n, dtype=torch.float64, device=batch.inputs.device)

    def hook(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        code = (output.detach().reshape(n, -1) > 0).to(torch.float64)
        kernel.add_(code @ code.T + (1 - code) @ (1 - code).T)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            network_logits(net, batch.inputs)
    finally:
        for h in handles:
            h.remove()
    return float(torch.linalg.slogdet(kernel)[1])


@register_baseline("jacov", doc="Jacobian covariance (Mellor et al. 2020): -sum(log(v + k) + 1/(v + k)) over eigenvalues of the input-Jacobian correlation",
                   version=2)
def jacov(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Return the JacobCov score of the per-input Jacobians of the summed logits (k = 1e-5).

    A network whose Jacobian is constant for some input (no path from input to output,
    as in NAS-Bench-201's disconnected cells) scores -inf: ranked last, like NASWOT's
    singular kernel, instead of a NaN that leaves the whole correlation undefined.
    """
    x = batch.inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (jac,) = torch.autograd.grad(network_logits(net, x).sum(), x)
    rows = jac.reshape(jac.shape[0], -1).to(torch.float64)
    corr = torch.corrcoef(rows)
    if not bool(torch.isfinite(corr).all()):
        return -math.inf  # an input with a constant Jacobian: nothing of it reaches the output
    eig = torch.linalg.eigvalsh(corr)
    k = 1e-5
    return float(-torch.sum(torch.log(eig + k) + 1.0 / (eig + k)))


@register_baseline("diswot", ("vit", "nas"), needs_teacher=True,
                   doc="DisWOT (Dong et al. CVPR 2023): -(||G_t - G_s|| + ||R_t - R_s||), semantic (class activation) "
                   "and sample-relation similarity with the benchmark's randomly initialised teacher")
def diswot(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Return minus the DisWOT distance between the student and the teacher (computed once per scoring call)."""
    from emq.diswot import diswot_distance, diswot_matrices

    if ctx.teacher is None:
        raise BaselineNotApplicableError("diswot needs the benchmark's distillation teacher")
    key = ("diswot-teacher", ctx.teacher.name, ctx.teacher.init_seed)
    if key not in ctx.memo:
        ctx.memo[key] = diswot_matrices(ctx.teacher.model(ctx.device), ctx.teacher.inputs(batch.inputs))
    return -diswot_distance(diswot_matrices(net, batch.inputs), ctx.memo[key])


#: Zen-score's perturbation scale (Lin et al. 2021, alpha).
ZEN_ALPHA = 0.01


@register_baseline("zen", ("nas",), doc="Zen-score (Lin et al. ICCV 2021): log E|f(x) - f(x + a e)| of the pre-pooling "
                   "features of the Gaussian-initialised network, plus sum over BatchNorms of log sqrt(mean variance)")
def zen(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Return Zen-score on a private copy: every conv/linear weight ~ N(0, 1), BatchNorm on batch statistics.

    The score is data-free (Gaussian inputs of the batch's shape, seeded by the
    context's seed). f is the input of the last global pooling (else of the last
    linear layer); each BatchNorm adds log sqrt(mean over channels of its batch
    variance), which undoes the normalisation's rescaling of the expressivity term.
    """
    model = copy.deepcopy(net).to(ctx.device)
    gen = torch.Generator(device="cpu").manual_seed(ctx.seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
                if module.bias is not None:
                    module.bias.zero_()
    model.train()
    pools = [m for m in model.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    target = pools[-1] if pools else (linears[-1] if linears else None)
    if target is None:
        return math.nan
    features: list[torch.Tensor] = []
    bn_logs: list[torch.Tensor] = []

    def grab(_module: nn.Module, args: tuple, _output: torch.Tensor) -> None:
        features.append(args[0].detach())

    def bn_scale(_module: nn.Module, args: tuple, _output: torch.Tensor) -> None:
        x = args[0].detach().to(torch.float64)
        dims = [d for d in range(x.ndim) if d != 1]
        bn_logs.append(torch.log(torch.sqrt(x.var(dim=dims, unbiased=False).mean())))

    x = torch.randn(batch.inputs.shape, generator=gen).to(ctx.device)
    noise = torch.randn(batch.inputs.shape, generator=gen).to(ctx.device)
    handles = [target.register_forward_hook(grab)]
    with torch.no_grad():
        network_logits(model, x + ZEN_ALPHA * noise)
        handles += [m.register_forward_hook(bn_scale) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        network_logits(model, x)
    for h in handles:
        h.remove()
    perturbed, clean = features
    delta = (clean - perturbed).to(torch.float64).abs().reshape(clean.shape[0], -1).sum(dim=1).mean()
    return float(torch.log(delta) + sum(bn_logs, torch.zeros((), dtype=torch.float64)))


@register_baseline("grasp", doc="GraSP (Wang et al. 2020): sum over weights of -W * (H g)")
def grasp(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Return sum(-W * Hg) over the conv/linear weights, g = dL/dW, H the loss Hessian (one batch)."""
    weights = [layer.weight for layer in quantizable_layers(net).values()]
    with torch.enable_grad():
        loss = F.cross_entropy(network_logits(net, batch.inputs), batch.labels)
        grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
        pairs = [(w, g) for w, g in zip(weights, grads) if g is not None]
        z = sum((g * g.detach()).sum() for _, g in pairs)
        if not isinstance(z, torch.Tensor) or not z.requires_grad:
            return 0.0  # the loss is linear in the weights: Hg = 0
        hg = torch.autograd.grad(z, [w for w, _ in pairs], allow_unused=True)
    return float(sum((-w.detach() * h).sum().double() for (w, _), h in zip(pairs, hg) if h is not None))


@register_baseline("fisher", doc="Fisher (Turner et al. 2020): sum over layer outputs of 0.5 * mean_n (sum_spatial a * dL/da)^2")
def fisher(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Return the Fisher score at every conv/linear output (per channel: sum over space/tokens, squared, batch mean)."""
    layers = quantizable_layers(net)
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
            outputs.setdefault(name, output)
            return output.clone()  # keeps the recorded output safe from in-place ops downstream
        return fn

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.enable_grad():
            loss = F.cross_entropy(network_logits(net, batch.inputs), batch.labels)
            names = list(outputs)
            grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    total = 0.0
    for name, g in zip(names, grads):
        if g is None:
            continue
        prod = (outputs[name].detach() * g).to(torch.float64)
        if prod.dim() == 4:  # (n, c, h, w): sum over space
            per_channel = prod.sum(dim=(2, 3))
        elif prod.dim() == 3:  # (n, tokens, c): sum over tokens
            per_channel = prod.sum(dim=1)
        else:
            per_channel = prod.reshape(prod.shape[0], -1)
        total += float(0.5 * per_channel.pow(2).mean(dim=0).sum())
    return total


@register_baseline("dss", ("vit",), doc="DSS (Zhou et al. CVPR 2022, TF-TAS): nuclear-norm synaptic diversity of the "
                   "attention layers + synaptic saliency of the other layers, on SynFlow gradients")
def dss(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Return sum over attention linear layers (qkv, proj) of ||W||_nuc * ||g||_nuc, plus sum over every other
    conv/linear layer (patch embedding, MLP, PiT pooling, head) of sum |W * g|, with |W| for W.

    As in TF-TAS's released code (the paper writes dL/dW and W): g is the gradient of the
    summed output of the network whose parameters are all replaced by their absolute
    values, on one all-ones input (the `virtual_grad` statistic, here in float64), and
    the norms are taken of that network's weights |W|. Layers are assigned by module
    (inside an attention module or not); TF-TAS's code tells them apart by "qkv or
    square Linear", which differs only for square MLP layers (MLP ratio 1).
    """
    from emq.models.autoformer import Attention

    grads = virtual_grads(net, bits, batch.inputs.shape[1:], ctx.device)
    in_attention = {f"{name}.{child}" for name, m in net.named_modules() if isinstance(m, Attention)
                    for child, _ in m.named_children()}
    total = 0.0
    for name, layer in quantizable_layers(net).items():
        w = layer.weight.detach().to(torch.float64).abs()
        g = grads[name].to(torch.float64)
        if name in in_attention and w.dim() == 2:
            total += float(torch.linalg.matrix_norm(w, "nuc") * torch.linalg.matrix_norm(g, "nuc"))
        else:
            total += float((w * g).abs().sum())
    return total


@register_baseline("qloss", ("mq",), trivial=True)
def qloss(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Minus the cross-entropy of the quantized network on the statistics batch (a trivial predictor).

    A configuration that hurts accuracy raises the loss on any labelled batch; a proxy
    that only rediscovers this is the quantized loss in disguise.
    """
    with torch.no_grad():
        return -float(F.cross_entropy(network_logits(net, batch.inputs), batch.labels))


@register_baseline("qloss_calib", ("mq",), trivial=True)
def qloss_calib(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """Minus the cross-entropy of the quantized network on the benchmark's calibration images (NaN without them).

    PTQ already runs these images through every configuration to set activation ranges,
    so their loss costs one more forward pass: the cheapest strong bar for MQ proxies.
    """
    if ctx.calibration is None:
        return math.nan
    calib = ctx.calibration
    with torch.no_grad():
        logits = network_logits(net, calib.inputs.to(ctx.device))
        return -float(F.cross_entropy(logits, calib.labels.to(ctx.device)))


#: Hutchinson samples per layer of HAWQ-v2's full-precision traces (results/hawq-v2-convergence.md: they settle).
HAWQ_V2_SAMPLES = 128


def hawq_v2_traces(float_model: nn.Module, batch: Batch, seed: int,
                   samples: int = HAWQ_V2_SAMPLES) -> dict[str, float]:
    """Return HAWQ-v2's layer sensitivity, the average Hessian trace Tr(H_l)/n_l of the full-precision network.

    One estimate serves every bit configuration of the network (HAWQ-v2 measures it once).
    """
    from emq.hessian_trace import hessian_traces

    fp_layers = quantizable_layers(float_model)
    running = hessian_traces(float_model, batch.inputs, batch.labels, samples, seed)
    return {n: values[-1] / fp_layers[n].weight.numel() for n, values in running.items()}


def hawq_v2_term(average_trace: float, weight: torch.Tensor, quantized: torch.Tensor) -> float:
    """Return one layer's HAWQ-v2 cost, Tr(H_l)/n_l * ||Q(W_l) - W_l||^2 (lower is better)."""
    w = weight.detach().to(torch.float64)
    return average_trace * float((quantized.detach().to(torch.float64) - w).pow(2).sum())


def hawq_v2_layer_costs(float_model: nn.Module, choices: Sequence[int],
                        traces: dict[str, float]) -> dict[str, dict[int, float]]:
    """Return HAWQ-v2's cost of each layer at each weight width in `choices` (its objective is minus their sum).

    `traces` are `hawq_v2_traces` of `float_model`. The objective is separable, so an
    allocator can minimise it exactly from this table.
    """
    from emq.quant.fake_quant import quantize_weight

    return {name: {int(b): hawq_v2_term(traces[name], layer.weight, quantize_weight(layer.weight, int(b)))
                   for b in choices}
            for name, layer in quantizable_layers(float_model).items()}


@register_baseline("hawq_v2", ("mq",), version=2)
def hawq_v2(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: BaselineContext) -> float:
    """HAWQ-v2 (Dong et al. 2020): -sum over layers of Tr(H_l)/n_l * ||Q(W_l) - W_l||^2, H of the full-precision net.

    The traces are estimated once per network (128 Hutchinson samples per layer on the statistics
    batch) and shared by every bit configuration; Q(W) are the candidate's quantized weights.
    """
    if ctx.float_model is None or bits is None:
        return math.nan
    fp_layers = quantizable_layers(ctx.float_model)
    key = "hawq_v2_traces"
    if key not in ctx.memo:
        ctx.memo[key] = hawq_v2_traces(ctx.float_model, batch, ctx.seed)
    traces = ctx.memo[key]
    return -sum(hawq_v2_term(traces[name], fp_layers[name].weight, layer.weight)
                for name, layer in quantizable_layers(net).items())


# ------------------------------------------------------------------- scoring
def baseline_scores(
    bench: Benchmark,
    names: Sequence[str],
    config: StatsConfig | None = None,
    progress: bool = True,
    candidates: Sequence[Candidate] | None = None,
    cache_root: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Return each named baseline's scores, aligned with `candidates` (default: all of `bench`'s).

    Program baselines are evaluated on the cached statistics (`iter_stats`: one
    candidate in memory at a time; a config whose explicit stat set lacks what they
    need is extended for them); model baselines are computed per candidate and cached.
    A failed evaluation gives NaN.
    """
    config = config or StatsConfig()
    cands = list(candidates) if candidates is not None else bench.candidates()
    arch = {n: arch_scores(bench, n, cands) for n in names if n.startswith(ARCH_PREFIX)}
    entries = [get_baseline(n) for n in names if n not in arch]
    wrong = [e.name for e in entries if not e.applies_to(bench)]
    if wrong:
        fitting = ", ".join(b.name for b in list_baselines(bench.family) if b.applies_to(bench))
        why = " (it needs a benchmark with a distillation teacher)" if all(
            bench.family in get_baseline(n).families for n in wrong) else ""
        raise BaselineNotApplicableError(f"baseline(s) {wrong} do not apply to {bench.name}{why}; applicable: {fitting}")
    out: dict[str, np.ndarray] = {}
    programs = {e.name: e.proxy() for e in entries if e.kind == "program"}
    if programs:
        needed = set().union(*(p.stats_needed for p in programs.values()))
        stats_config = config
        if config.stat_names is not None and not needed <= set(config.stat_names):
            extra = tuple(sorted(needed - set(config.stat_names)))
            stats_config = dataclasses.replace(config, stat_names=config.stat_names + extra)
        # One candidate's statistics in memory at a time: a ViT's are tens to hundreds of MB.
        rows = [[_evaluate(proxy, stats) for proxy in programs.values()]
                for stats in iter_stats(bench, cands, stats_config, progress=progress, cache_root=cache_root)]
        table = np.array(rows, dtype=np.float64).reshape(len(cands), len(programs))
        for k, name in enumerate(programs):
            out[name] = table[:, k]
    for entry in entries:
        if entry.kind == "model":
            out[entry.name] = model_baseline_scores(bench, entry, cands, config, progress, cache_root)
    out.update(arch)
    return {n: out[n] for n in names}


def arch_scores(bench: Benchmark, name: str, candidates: Sequence[Candidate]) -> np.ndarray:
    """Return the values of architecture hyperparameter `arch:<feature>` for `candidates` (higher = larger)."""
    feature = name[len(ARCH_PREFIX):]
    values = []
    for cand in candidates:
        features = bench.arch_features(cand)
        if feature not in features:
            known = ", ".join(ARCH_PREFIX + k for k in sorted(features)) or "none (no arch records)"
            raise UnknownBaselineError(f"unknown baseline {name!r} for {bench.name}; its arch baselines: {known}")
        values.append(features[feature])
    return np.asarray(values, dtype=np.float64)


def _evaluate(proxy: Proxy, stats: Any) -> float:
    try:
        return proxy.evaluate(stats)
    except ProxyEvaluationError:
        return math.nan


def baseline_cache_path(bench: Benchmark, baseline: Baseline, config: StatsConfig,
                        cache_root: str | Path | None = None) -> tuple[Path, str]:
    """Return (file, key) of a model baseline's cached scores: the stats key scheme, stat-only fields neutral."""
    batch = bench.batch(config.batch_seed, config.batch_size)
    neutral = StatsConfig(batch_seed=config.batch_seed, batch_size=config.batch_size, init_seed=config.init_seed)
    key = config_key(bench.name, neutral, bench_fields(bench, batch))
    root = Path(cache_root) if cache_root is not None else cache_dir()
    return root / safe_name(bench.name) / key / f"baseline-{safe_name(baseline.name)}.json", key


def model_baseline_scores(
    bench: Benchmark,
    baseline: Baseline,
    candidates: Sequence[Candidate],
    config: StatsConfig,
    progress: bool = True,
    cache_root: str | Path | None = None,
    save_every_s: float = 30.0,
) -> np.ndarray:
    """Return a model baseline's scores for `candidates`, computing (and caching) those not on disk."""
    if baseline.fn is None:
        raise TypeError(f"baseline {baseline.name!r} is a program baseline")
    path, key = baseline_cache_path(bench, baseline, config, cache_root)
    cached = _read_model_scores(path, key, baseline)
    batch = bench.batch(config.batch_seed, config.batch_size)
    device = torch.device(config.resolved_device())
    run_batch = Batch(batch.inputs.to(device), batch.labels.to(device), batch.source, batch.seed)
    calib = calibration_inputs(bench)
    act_bits = getattr(bench, "act_bits", 8)
    ctx = BaselineContext(device=device, seed=config.batch_seed, act_bits=act_bits,
                          calibration=bench.calibration_batch(), teacher=bench.teacher())
    todo = [c for c in candidates if _score_key(c) not in cached]
    last_save = time.monotonic()
    try:
        for cand in tqdm(todo, desc=f"{baseline.name} {bench.name}", unit="net", disable=not progress or not todo,
                         leave=False):
            start = time.perf_counter()
            model = bench.build_model(cand, init_seed=config.init_seed)
            net = prepare_network(model, cand.bits, act_bits=act_bits, calib_inputs=calib,
                                  fallback_calib=batch.inputs, device=device)
            cand_ctx = dataclasses.replace(ctx, float_model=model.to(device), memo=ctx.memo)
            try:
                cached[_score_key(cand)] = float(baseline.fn(net, run_batch, cand.bits, cand_ctx))
            except (torch.linalg.LinAlgError, FloatingPointError, ZeroDivisionError) as err:
                warnings.warn(f"baseline {baseline.name} failed on candidate {cand.id}: {err}; scored NaN", stacklevel=2)
                cached[_score_key(cand)] = math.nan
            cached.seconds[_score_key(cand)] = time.perf_counter() - start
            if time.monotonic() - last_save > save_every_s:
                _write_model_scores(path, key, baseline, batch, cached)
                last_save = time.monotonic()
    finally:
        if todo:
            _write_model_scores(path, key, baseline, batch, cached)
    return np.array([cached[_score_key(c)] for c in candidates], dtype=np.float64)


def _score_key(candidate: Candidate) -> str:
    """Return a candidate's key in a model baseline's score file: its id and its fingerprint (bits or arch)."""
    return f"{candidate.id}@{candidate.fingerprint()}"


def baseline_costs(bench: Benchmark, names: Sequence[str], config: StatsConfig,
                   cache_root: str | Path | None = None) -> dict[str, float]:
    """Return the measured seconds per candidate of the model baselines among `names` (program ones share the cache)."""
    out = {}
    for name in names:
        if name.startswith(ARCH_PREFIX):
            out[name] = 0.0
        elif get_baseline(name).kind == "model":
            cost = model_baseline_cost(bench, get_baseline(name), config, cache_root)
            if cost is not None:
                out[name] = cost
    return out


class _Scores(dict):
    """Cached scores by candidate id, with the seconds each took (the baseline's cost, kept beside it)."""

    def __init__(self, scores: dict[str, float] | None = None, seconds: dict[str, float] | None = None) -> None:
        super().__init__(scores or {})
        self.seconds: dict[str, float] = dict(seconds or {})


def model_baseline_cost(bench: Benchmark, baseline: Baseline, config: StatsConfig,
                        cache_root: str | Path | None = None) -> float | None:
    """Return a model baseline's mean seconds per candidate as measured when its scores were cached (None if unknown)."""
    path, key = baseline_cache_path(bench, baseline, config, cache_root)
    seconds = _read_model_scores(path, key, baseline).seconds
    return float(np.mean(list(seconds.values()))) if seconds else None


def _write_model_scores(path: Path, key: str, baseline: Baseline, batch: Batch, scores: _Scores) -> None:
    # JSON has no NaN/inf: non-finite scores are written as the strings "nan", "inf", "-inf".
    data = {
        "format": MODEL_SCORES_FORMAT,
        "baseline": baseline.name,
        "version": baseline.version,
        "key": key,
        "batch": batch.describe(),
        "scores": {k: (v if math.isfinite(v) else str(v)) for k, v in scores.items()},
        "seconds": {k: round(v, 6) for k, v in scores.seconds.items()},
    }
    write_json_atomic(path, data)


def _read_model_scores(path: Path, key: str, baseline: Baseline) -> _Scores:
    if not path.exists():
        return _Scores()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MODEL_SCORES_FORMAT or data.get("key") != key:
            raise ValueError("written for another configuration")
        if data.get("version") != baseline.version:
            return _Scores()  # the baseline's code changed: recompute silently, this is expected
        return _Scores({str(k): float(v) for k, v in data["scores"].items()},
                       {str(k): float(v) for k, v in data.get("seconds", {}).items()})
    except Exception as err:  # an unreadable cache is recomputed, never fatal
        warnings.warn(f"baseline cache file {path} is unreadable ({type(err).__name__}: {err}); recomputing it",
                      stacklevel=3)
        return _Scores()


# ---------------------------------------------- references of the known-proxy library
# MeCo, ZiCo, SWAP, the AZ-NAS terms and network-side SynFlow / SNIP / grad-norm (emq.baselines_structured).
for _reference in REFERENCES:
    register_baseline(_reference.name, _reference.families, _reference.doc, version=_reference.version)(_reference.fn)
