"""Per-layer Hessian traces of the loss by Hutchinson's estimator (HAWQ-v2's layer sensitivity).

Tr(H_l) = E_z[z_l^T (H z)_l] for Rademacher z: one Hessian-vector product per sample
gives an unbiased estimate for every layer at once. HAWQ-v2 (Dong et al., NeurIPS 2020)
ranks layers by the *average* trace Tr(H_l) / n_l of the full-precision network.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from emq.quant.layers import quantizable_layers


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
    with torch.enable_grad():
        out = net(inputs)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        loss = F.cross_entropy(logits, labels)
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        totals = [0.0] * len(names)
        running: dict[str, list[float]] = {n: [] for n in names}
        for k in range(1, samples + 1):
            zs = [(torch.randint(0, 2, w.shape, generator=gen, dtype=torch.int8) * 2 - 1).to(w.device, w.dtype)
                  for w in weights]
            hz = torch.autograd.grad(grads, weights, grad_outputs=zs, retain_graph=True)
            for i, (z, h) in enumerate(zip(zs, hz)):
                totals[i] += float((z.double() * h.double()).sum())
                running[names[i]].append(totals[i] / k)
    return running
