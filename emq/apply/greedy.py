"""`qloss-greedy`: bit allocation by the quantized network's own loss, the trivial predictor used as an allocator.

Start with every layer at the largest width; while the configuration exceeds the
budget, lower by one step the layer whose lowering raises the loss least per bit
saved (bits x weights). The loss is the cross-entropy of the post-training-quantized
network on the benchmark's labelled calibration images, quantized exactly as the
benchmark's PTQ does (`emq.quant.fake_quant.quantized_model`, activation ranges from
the same images). It needs no statistics and no search: a discovered proxy that
allocates worse than this has not learned more than the loss already tells.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emq.apply.allocation import BitAllocation
from emq.apply.budget import Bits, Budget, average_bits, check_budget, size_bits, size_mb
from emq.bench.base import Batch
from emq.quant.fake_quant import quantized_model
from emq.quant.layers import quantizable_layers

#: How the objective reads in reports.
QLOSS_GREEDY_FORMULA = "-cross_entropy(PTQ network, calibration images); greedy lowering"


class CalibrationLoss:
    """Cross-entropy of the PTQ-quantized network on labelled calibration images, per configuration (cached)."""

    def __init__(self, model: nn.Module, calibration: Batch, act_bits: int | None) -> None:
        self.model = model
        self.calibration = calibration
        self.act_bits = act_bits
        self.layers = list(quantizable_layers(model))
        self.params = {n: int(m.weight.numel()) for n, m in quantizable_layers(model).items()}
        self._loss: dict[Bits, float] = {}
        self._seconds: dict[Bits, float] = {}

    def __call__(self, widths: Bits) -> float:
        """Return the loss at `widths` (one width per layer, in `layers` order)."""
        widths = tuple(int(b) for b in widths)
        if widths not in self._loss:
            start = time.perf_counter()
            net = quantized_model(self.model, dict(zip(self.layers, widths)), act_bits=self.act_bits,
                                  calib_inputs=self.calibration.inputs)
            with torch.no_grad():
                self._loss[widths] = float(F.cross_entropy(net(self.calibration.inputs), self.calibration.labels))
            self._seconds[widths] = time.perf_counter() - start
        return self._loss[widths]

    def seconds(self, widths: Bits) -> float:
        """Return how long evaluating `widths` took (0 when it was never evaluated)."""
        return self._seconds.get(tuple(int(b) for b in widths), 0.0)

    @property
    def evaluations(self) -> int:
        return len(self._loss)


def greedy_lowering(loss: Callable[[Bits], float], params: Sequence[int], choices: Sequence[int],
                    cap: int) -> tuple[Bits, list[Bits]]:
    """Return (widths within `cap`, every configuration whose loss was read), lowering greedily from the top.

    Each step lowers one layer by one width, the one with the least loss increase per
    bit-weight saved; ties go to the earlier layer, so the result is deterministic.
    """
    order = sorted(int(b) for b in choices)
    widths = tuple(order[-1] for _ in params)
    if order[0] * sum(params) > cap:
        raise ValueError(f"every layer at {order[0]} bits exceeds the cap of {cap} bit-weights")
    seen = [widths]
    size = sum(b * p for b, p in zip(widths, params))
    current = loss(widths)
    while size > cap:
        best: tuple[float, int, Bits, float] | None = None
        for i, b in enumerate(widths):
            if b == order[0]:
                continue
            lower = order[order.index(b) - 1]
            trial = widths[:i] + (lower,) + widths[i + 1:]
            value = loss(trial)
            seen.append(trial)
            ratio = (value - current) / ((b - lower) * params[i])
            if best is None or ratio < best[0]:
                best = (ratio, i, trial, value)
        assert best is not None  # some layer is above the lowest width while the size exceeds the cap
        _, i, widths, current = best
        size = sum(b * p for b, p in zip(widths, params))
    return widths, seen


def allocate_qloss_greedy(loss: CalibrationLoss, choices: Sequence[int], budget: Budget) -> BitAllocation:
    """Return qloss-greedy's configuration within `budget` (never above it).

    `seconds` sums the time of every loss evaluation this allocation read, cached or not,
    so that budgets sharing a greedy path each show what the allocation alone would cost.
    """
    choices = tuple(sorted(int(b) for b in choices))
    cap = check_budget(budget, loss.params, choices)
    widths, seen = greedy_lowering(loss, [loss.params[n] for n in loss.layers], choices, cap)
    bits = dict(zip(loss.layers, widths))
    assert size_bits(bits, loss.params) <= cap, "allocation exceeds the budget"
    distinct = set(seen)
    return BitAllocation(
        bits=bits, method="greedy", score=-loss(widths), size_bits=size_bits(bits, loss.params),
        size_mb=size_mb(bits, loss.params), average_bits=average_bits(bits, loss.params), budget=budget.describe(),
        cap_bits=cap, optimal=False, evaluations=len(distinct), seconds=sum(loss.seconds(w) for w in distinct),
        proxy=QLOSS_GREEDY_FORMULA)
