"""SynFlow's virtual gradients (`virtual_grad`) and the network forward that every statistic shares.

`virtual_grads` runs a private copy of the network whose every parameter is replaced by
its absolute value (weights quantized first when bits are given), BatchNorm bypassed,
in float64 on one all-ones input, and returns d(sum of outputs)/d(weight) per layer.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from emq.quant.fake_quant import quantize_weight
from emq.quant.layers import quantizable_layers


def network_logits(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Return the classification logits (the first output when a network returns a tuple)."""
    out = net(inputs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def virtual_grads(model: nn.Module, bits: dict[str, int] | None, input_shape: torch.Size,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Return SynFlow gradients: |params| network, BatchNorm bypassed, float64, one all-ones input."""
    vnet = copy.deepcopy(model)
    _bypass_batchnorm(vnet)
    layers = quantizable_layers(vnet)
    with torch.no_grad():
        if bits is not None:
            for name, layer in layers.items():
                layer.weight.copy_(quantize_weight(layer.weight, bits[name]))
        for p in vnet.parameters():
            p.abs_()
    vnet.to(device=device, dtype=torch.float64).eval()
    for p in vnet.parameters():
        p.requires_grad_(False)
    weights = [layer.weight.requires_grad_(True) for layer in layers.values()]
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    with torch.enable_grad():
        out = network_logits(vnet, ones)
        grads = torch.autograd.grad(out.sum(), weights, allow_unused=True)
    return {n: (torch.zeros_like(w) if g is None else g.detach()) for n, w, g in zip(layers, weights, grads)}


def _bypass_batchnorm(model: nn.Module) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, nn.Identity())
