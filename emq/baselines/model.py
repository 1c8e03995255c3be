"""Model baselines: proxies that need the network itself (`fn(net, batch, bits, ctx) -> float`), run on a
private copy of the network the statistics come from, on the same fixed batch (NASWOT, jacov, Zen, GraSP, ...)."""
from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emq.baselines.registry import BaselineContext, BaselineNotApplicableError, register_baseline
from emq.bench.base import Batch
from emq.quant.fake_quant import squared_quantization_error
from emq.quant.layers import quantizable_layers
from emq.stats.compute import network_logits, virtual_grads
from emq.stats.hessian_trace import TRACE_SAMPLES, average_traces


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


#: Hutchinson samples per layer of HAWQ-v2's full-precision traces (`emq.stats.hessian_trace.TRACE_SAMPLES`).
HAWQ_V2_SAMPLES = TRACE_SAMPLES


def hawq_v2_traces(float_model: nn.Module, batch: Batch, seed: int,
                   samples: int = HAWQ_V2_SAMPLES) -> dict[str, float]:
    """Return HAWQ-v2's layer sensitivity, the average Hessian trace Tr(H_l)/n_l of the full-precision network.

    One estimate serves every bit configuration of the network (HAWQ-v2 measures it once).
    """
    return average_traces(float_model, batch.inputs, batch.labels, samples, seed)


def hawq_v2_term(average_trace: float, weight: torch.Tensor, quantized: torch.Tensor) -> float:
    """Return one layer's HAWQ-v2 cost, Tr(H_l)/n_l * ||Q(W_l) - W_l||^2 (lower is better)."""
    return average_trace * squared_quantization_error(weight, quantized)


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


@register_baseline("hawq_v2", ("mq",), version=2, separable=True)
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
