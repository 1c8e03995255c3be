"""Fake quantization for post-training mixed precision: per-channel weights, per-tensor activations.

Weights: symmetric, per output channel, scale from the channel's max |w| (min/max
calibration). Activations: asymmetric per tensor, range calibrated on a batch.
Everything returns new tensors / model copies; the caller's model is never touched.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from emq.quant.layers import (
    MAX_WEIGHT_BITS, MIN_WEIGHT_BITS, BitAssignmentError, check_bit_assignment, quantizable_layers, valid_weight_bits,
)


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Return `weight` fake-quantized to `bits` (symmetric, one scale per output channel)."""
    if bits >= 32:
        return weight.detach().clone()
    levels = 2 ** (bits - 1) - 1  # e.g. 4 bits -> integers in [-7, 7]
    if levels < 1:
        raise ValueError(f"weight bits must be >= 2, got {bits}")
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / levels
    q = torch.clamp(torch.round(flat / scale[:, None]), -levels, levels) * scale[:, None]
    return q.reshape(weight.shape)


class _ActQuant(torch.autograd.Function):
    """Uniform asymmetric fake quantization with a straight-through gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float, bits: int) -> torch.Tensor:  # type: ignore[override]
        n = 2**bits - 1
        scale = max(hi - lo, 1e-12) / n
        return torch.clamp(torch.round((x - lo) / scale), 0, n) * scale + lo

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None, None, None


class ActivationQuantizer(nn.Module):
    """Forward pre-hook state: quantizes a layer's input to `bits` within a calibrated range."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.lo: float | None = None
        self.hi: float | None = None

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo is None or self.hi is None:
            raise RuntimeError("activation quantizer used before calibration")
        return _ActQuant.apply(x, self.lo, self.hi, self.bits)


def squared_quantization_error(weight: torch.Tensor, quantized: torch.Tensor) -> float:
    """Return ||Q(W) - W||^2 in float64: HAWQ-v2's error term (`hawq_v2`, `lb_weight_error`), one definition."""
    return float((quantized.detach().to(torch.float64) - weight.detach().to(torch.float64)).pow(2).sum())


def quantized_model(
    model: nn.Module,
    bits: dict[str, int],
    act_bits: int | None = 8,
    calib_inputs: torch.Tensor | None = None,
) -> nn.Module:
    """Return a deep copy of `model` with fake-quantized weights and (optionally) inputs.

    Weight bits are keyed by layer name and must cover every conv/linear layer. The
    quantized weights are the copy's parameters, so gradients w.r.t. them are the
    straight-through gradients. Activation ranges are calibrated on `calib_inputs`
    (required when `act_bits` is set).
    """
    check_bit_assignment(model, bits)
    check_act_bits(act_bits)
    qmodel = copy.deepcopy(model)
    layers = quantizable_layers(qmodel)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.weight.copy_(quantize_weight(layer.weight, bits[name]))
    if act_bits is not None:
        if calib_inputs is None:
            raise ValueError("calib_inputs are needed to calibrate activation quantization")
        attach_activation_quantizers(qmodel, act_bits, calib_inputs)
    return qmodel


def check_act_bits(act_bits: int | None) -> None:
    """Fail (BitAssignmentError) unless `act_bits` is None (full precision) or a width the quantizer accepts."""
    if act_bits is not None and not valid_weight_bits(act_bits):
        raise BitAssignmentError(f"act_bits must be an integer in {MIN_WEIGHT_BITS}..{MAX_WEIGHT_BITS} (or None for "
                                 f"full-precision activations), got {act_bits!r}")


def attach_activation_quantizers(model: nn.Module, bits: int, calib_inputs: torch.Tensor) -> None:
    """Calibrate per-layer input ranges on `calib_inputs`, then quantize each layer's input."""
    layers = quantizable_layers(model)
    quantizers = {name: ActivationQuantizer(bits) for name in layers}
    handles = [
        layer.register_forward_pre_hook(lambda _m, args, q=quantizers[name]: q.observe(args[0]))
        for name, layer in layers.items()
    ]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(calib_inputs)
    for h in handles:
        h.remove()
    for name, layer in layers.items():
        layer.act_quantizer = quantizers[name]  # keeps it in state for inspection
        layer.register_forward_pre_hook(lambda m, args: (m.act_quantizer(args[0]),) + tuple(args[1:]))
    model.train(was_training)
