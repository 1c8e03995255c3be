"""Reference implementations of the known proxies that read activation structure: MeCo, ZiCo, SWAP, AZ-NAS terms,
and network-side twins of SynFlow, SNIP and grad-norm.

Each is computed on the network itself (`fn(net, batch, bits, ctx) -> float`, registered
as a model baseline by `emq.baselines`), with its own hooks and arithmetic: none reads
the statistics cache, so comparing a known-proxy program (`emq.known`) with its
reference checks the statistics and the ops as well as the formula. Higher scores
predict higher accuracy, as for every baseline.

- `meco` (Jiang et al., NeurIPS 2023): the sum over conv/linear layers with positions of
  the smallest eigenvalue of the Pearson correlation of the layer output's channels,
  the network run on one input (the batch's first); undefined correlations (a constant
  channel) count 0, as MeCo's code sets NaN to 0. The paper's "layers"; its released
  code hooks every module. A layer whose correlation is singular by construction (no
  more positions than channels, or a constant channel) adds exactly 0, its smallest
  eigenvalue, rather than the rounding noise an eigensolver returns for it: summed over
  layers that noise grows with width and ranked vit-digits' ViTs (17 tokens, 48-192
  channels: every layer singular) with Kendall -0.49, while MeCo is 0 for all of them.
- `zico` (Li et al., ICLR 2023): sum over conv/linear layers of
  log(sum over weights of mean|g| / std(g)), g the loss gradient on each of 2
  mini-batches (the batch's halves), population std; weights with std 0 are left out, and
  so is a layer whose sum is 0 (no gradient reaches it).
- `swap` (Peng et al., ICLR 2024): the number of distinct sample-wise activation patterns:
  every unit of every activation module (each call) is the B-bit vector "active on
  input i", and SWAP counts the distinct vectors (the unregularised score).
- `az_expressivity`, `az_progressivity` (Lee & Ham, CVPR 2024): per conv/linear layer the
  entropy of the normalised eigenvalues of its output's channel covariance (over batch
  and positions); expressivity is their sum, progressivity the smallest increase from
  one layer to the next (forward order). AZ-NAS computes them per block; here the
  layers of the statistics are the blocks. Its trainability term (block Jacobian
  spectra) is not implemented; its complexity term is `flops`. The AZ-NAS aggregate is
  a sum of log-ranks over the candidate set, not a function of one network, so it is no
  registered baseline: `rank_aggregate` builds it from the terms' scores over the
  candidates scored together (`AGGREGATES`: `az_nas_ec` = expressivity + FLOPs,
  `az_nas_3` = + progressivity).
- `synflow_net`, `snip_net`, `grad_norm_net`: SynFlow (Tanaka et al. 2020), SNIP (Lee et al.
  2019) and the gradient norm computed on the network, the twins of the program
  baselines `synflow`, `snip`, `grad_norm` (which read the cached statistics).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emq.bench.base import Batch
from emq.quant.layers import quantizable_layers
from emq.stats.structured import ACTIVATION_MODULES
from primitives.ranks import log_rank

#: A model baseline: (network, batch, bits, context with `.device` and `.seed`) -> score.
ReferenceFn = Callable[[nn.Module, Batch, "dict[str, int] | None", Any], float]


def _logits(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    out = net(inputs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _first_outputs(net: nn.Module, modules: dict[str, nn.Module], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Return the first output of each module on `inputs` (no gradients), in the order they first ran."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _a: tuple, output: torch.Tensor) -> None:
            seen.setdefault(name, output.detach())
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            _logits(net, inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _positions_by_channels(output: torch.Tensor) -> torch.Tensor:
    """Return an output as (batch, positions, channels) (float64): conv channels are dim 1, tokens' the last dim."""
    x = output.to(torch.float64)
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])
    if x.dim() == 3:
        return x
    return x.reshape(x.shape[0], 1, -1)


def meco(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: Any) -> float:
    """MeCo: sum over layers of the smallest eigenvalue of the channel correlation of one input's feature map."""
    total = 0.0
    for output in _first_outputs(net, quantizable_layers(net), batch.inputs[:1]).values():
        x = _positions_by_channels(output)[0]  # (positions, channels)
        if x.shape[0] < 2:
            continue  # one position: no correlation
        if x.shape[0] <= x.shape[1] or bool((x == x[:1]).all(dim=0).any()):
            # Rank at most positions - 1 < channels, or a constant channel's zero row: the smallest eigenvalue
            # is exactly 0, and what eigvalsh returns for it is rounding (1e-14 here), not MeCo.
            continue
        corr = torch.corrcoef(x.T)
        total += float(torch.linalg.eigvalsh(corr)[0])
    return total


def zico(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: Any) -> float:
    """ZiCo: sum over layers of log(sum_w mean|g| / std g), g over the batch's two halves (layers without signal left out)."""
    layers = quantizable_layers(net)
    weights = [layer.weight for layer in layers.values()]
    halves = []
    with torch.enable_grad():
        for x, y in zip(torch.tensor_split(batch.inputs, 2), torch.tensor_split(batch.labels, 2)):
            grads = torch.autograd.grad(F.cross_entropy(_logits(net, x), y), weights, allow_unused=True)
            halves.append([torch.zeros_like(w) if g is None else g.detach().to(torch.float64)
                           for w, g in zip(weights, grads)])
    total = 0.0
    for i in range(len(weights)):
        g = torch.stack([half[i] for half in halves])
        std = g.std(dim=0, correction=0)
        mean_abs = g.abs().mean(dim=0)
        keep = std > 0
        ratio = float((mean_abs[keep] / std[keep]).sum())
        if ratio > 0:
            total += math.log(ratio)
    return total


def swap(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: Any) -> float:
    """SWAP: the number of distinct sample-wise activation patterns over every activation unit of the network."""
    modules = [m for m in net.modules() if isinstance(m, ACTIVATION_MODULES)]
    if not modules:
        modules = list(quantizable_layers(net).values())
    n = batch.inputs.shape[0]
    codes: list[torch.Tensor] = []

    def hook(_m: nn.Module, _a: tuple, output: torch.Tensor) -> None:
        codes.append((output.detach().reshape(n, -1) > 0).to(torch.uint8))

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            _logits(net, batch.inputs)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return 0.0
    patterns = torch.cat(codes, dim=1).T  # (units, samples)
    return float(torch.unique(patterns, dim=0).shape[0])


def _covariance_entropies(net: nn.Module, batch: Batch) -> list[float]:
    """Return per conv/linear layer (forward order) the entropy of the normalised channel-covariance eigenvalues."""
    entropies = []
    for output in _first_outputs(net, quantizable_layers(net), batch.inputs).values():
        x = _positions_by_channels(output).reshape(-1, _positions_by_channels(output).shape[2])
        x = x - x.mean(dim=0, keepdim=True)
        cov = x.T @ x / x.shape[0]
        eig = torch.linalg.eigvalsh(cov).abs()
        if float(eig.sum()) == 0.0:
            entropies.append(0.0)
            continue
        p = eig / eig.sum()
        p = p[p > 0]
        entropies.append(float(-(p * p.log()).sum()))
    return entropies


def az_expressivity(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: Any) -> float:
    """AZ-NAS expressivity: sum over layers of the spectral entropy of the output channels' covariance."""
    return float(sum(_covariance_entropies(net, batch)))


def az_progressivity(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: Any) -> float:
    """AZ-NAS progressivity: the smallest increase of that entropy from one layer to the next (forward order)."""
    entropies = _covariance_entropies(net, batch)
    if len(entropies) < 2:
        return 0.0
    return float(min(b - a for a, b in zip(entropies, entropies[1:])))


def synflow_net(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: Any) -> float:
    """SynFlow on the network: sum |theta * dR/dtheta|, R the summed output of the |theta| network (BatchNorm off,
    float64) on one all-ones input."""
    twin = copy.deepcopy(net)
    for name, module in list(twin.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parent_name, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent_name) if parent_name else twin, child, nn.Identity())
    twin = twin.to(torch.float64)
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
    weights = [layer.weight for layer in quantizable_layers(twin).values()]
    for w in weights:
        w.requires_grad_(True)
    ones = torch.ones((1, *batch.inputs.shape[1:]), dtype=torch.float64, device=batch.inputs.device)
    with torch.enable_grad():
        grads = torch.autograd.grad(_logits(twin, ones).sum(), weights, allow_unused=True)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads) if g is not None))


def _loss_gradients(net: nn.Module, batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    weights = [layer.weight for layer in quantizable_layers(net).values()]
    with torch.enable_grad():
        grads = torch.autograd.grad(F.cross_entropy(_logits(net, batch.inputs), batch.labels), weights,
                                    allow_unused=True)
    return [(w.detach().to(torch.float64), torch.zeros_like(w, dtype=torch.float64) if g is None
             else g.detach().to(torch.float64)) for w, g in zip(weights, grads)]


def snip_net(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: Any) -> float:
    """SNIP on the network: sum over conv/linear weights of |W * dL/dW|, L the cross-entropy on the batch."""
    return float(sum((w * g).abs().sum() for w, g in _loss_gradients(net, batch)))


def grad_norm_net(net: nn.Module, batch: Batch, bits: dict[str, int] | None, ctx: Any) -> float:
    """Gradient norm on the network: sum over conv/linear layers of ||dL/dW||_2."""
    return float(sum(torch.linalg.vector_norm(g) for _, g in _loss_gradients(net, batch)))


@dataclass(frozen=True)
class ReferenceSpec:
    """One reference to register as a model baseline (`emq.baselines.register_baseline`)."""

    name: str
    fn: ReferenceFn
    doc: str
    families: tuple[str, ...] = ("vit", "nas")
    #: Bumped when the code changes, so cached scores are recomputed (`emq.baselines.Baseline.version`).
    version: int = 1


REFERENCES: tuple[ReferenceSpec, ...] = (
    ReferenceSpec("meco", meco, "MeCo (Jiang et al. NeurIPS 2023): sum over layers of the smallest eigenvalue of the "
                  "channel correlation of one input's feature map", version=2),  # 2: singular layers add 0
    ReferenceSpec("zico", zico, "ZiCo (Li et al. ICLR 2023): sum over layers of log(sum mean|g| / std g) over the "
                  "batch's two halves"),
    ReferenceSpec("swap", swap, "SWAP (Peng et al. ICLR 2024): number of distinct sample-wise activation patterns"),
    ReferenceSpec("az_expressivity", az_expressivity, "AZ-NAS expressivity (Lee & Ham CVPR 2024): sum over layers of "
                  "the spectral entropy of the output channels' covariance"),
    ReferenceSpec("az_progressivity", az_progressivity, "AZ-NAS progressivity: smallest layer-to-layer increase of "
                  "that entropy"),
    ReferenceSpec("synflow_net", synflow_net, "SynFlow computed on the network (twin of the program baseline synflow)"),
    ReferenceSpec("snip_net", snip_net, "SNIP computed on the network (twin of the program baseline snip)"),
    ReferenceSpec("grad_norm_net", grad_norm_net, "gradient norm computed on the network (twin of grad_norm)"),
)


#: Rank aggregates of baselines (AZ-NAS's sum of log(rank / N)), by name: the baselines they join.
AGGREGATES: dict[str, tuple[str, ...]] = {
    "az_nas_ec": ("az_expressivity", "flops"),
    "az_nas_3": ("az_expressivity", "az_progressivity", "flops"),
}


def rank_aggregate(scores: Mapping[str, np.ndarray], terms: tuple[str, ...]) -> np.ndarray:
    """Return sum over `terms` of log(rank / N) of each term's scores among the candidates (AZ-NAS's aggregate).

    The same ranks as the `n_rank_log` op (average rank for ties; NaN stays NaN).
    """
    total = np.zeros(len(next(iter(scores.values()))), dtype=np.float64)
    for term in terms:
        total = total + log_rank(torch.as_tensor(np.asarray(scores[term], dtype=np.float64))).numpy()
    return total
