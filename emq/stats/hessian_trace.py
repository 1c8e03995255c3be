"""Per-layer Hessian traces of the loss by Hutchinson's estimator (HAWQ-v2's layer sensitivity).

Tr(H_ll) = E_z[z^T H_ll z] for a Rademacher z on layer l alone: each sample is one
product of the layer's own Hessian block with z. Drawing z over every layer at once
would cost one product for all layers, but adds the cross-layer blocks to the variance:
on mq-digits some layers' traces then still changed sign after 64 samples. HAWQ-v2
(Dong et al., NeurIPS 2020) ranks layers by the *average* trace Tr(H_l) / n_l of the
full-precision network.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from emq.quant.layers import quantizable_layers

#: Hutchinson samples per layer of HAWQ-v2's full-precision traces (results/hawq-v2-convergence.md: they settle).
TRACE_SAMPLES = 128


def hessian_traces(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, samples: int = 64,
                   seed: int = 0) -> dict[str, list[float]]:
    """Return, per conv/linear layer name, the running Hutchinson estimate of Tr(H_l) after 1..`samples` samples.

    The model is copied (never modified); z is drawn on the CPU from `seed`, so devices agree.
    The last value of each list is the estimate; the list shows its convergence.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    layers = quantizable_layers(net)
    names = list(layers)
    weights = [layers[n].weight.requires_grad_(True) for n in names]
    gen = torch.Generator().manual_seed(seed)
    running: dict[str, list[float]] = {}
    with torch.enable_grad():
        out = net(inputs)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        loss = F.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        for name, w, g in zip(names, weights, grads):
            total, values = 0.0, []
            for k in range(1, samples + 1):
                z = (torch.randint(0, 2, w.shape, generator=gen, dtype=torch.int8) * 2 - 1).to(w.device, w.dtype)
                (hz,) = torch.autograd.grad(g, w, grad_outputs=z, retain_graph=True)
                total += float((z.double() * hz.double()).sum())
                values.append(total / k)
            running[name] = values
    return running


def average_traces(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, samples: int = TRACE_SAMPLES,
                   seed: int = 0) -> dict[str, float]:
    """Return HAWQ-v2's layer sensitivity Tr(H_l)/n_l of `model` (the one owner: `hawq_v2` and `lb_hessian_error`)."""
    layers = quantizable_layers(model)
    running = hessian_traces(model, inputs, labels, samples, seed)
    return {n: values[-1] / layers[n].weight.numel() for n, values in running.items()}
