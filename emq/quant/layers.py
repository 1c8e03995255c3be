"""Which modules are quantizable layers, keyed by module path."""
from __future__ import annotations

from torch import nn

from emq.errors import EMQUserError

QUANTIZABLE = (nn.Conv2d, nn.Linear)
#: The weight bit-widths the quantizer accepts, the one rule every loader checks: symmetric quantization
#: needs 2 bits for one level besides zero, and 32 bits means the float weights.
MIN_WEIGHT_BITS, MAX_WEIGHT_BITS = 2, 32


class BitAssignmentError(EMQUserError, ValueError):
    """A bit assignment that does not fit the network or the quantizer; the message names the layers."""


def valid_weight_bits(value: object) -> bool:
    """Return whether `value` is a weight bit-width the quantizer accepts (an int in MIN..MAX_WEIGHT_BITS)."""
    return isinstance(value, int) and not isinstance(value, bool) and MIN_WEIGHT_BITS <= value <= MAX_WEIGHT_BITS


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Return conv/linear modules by name, in registration order (the forward order for our nets)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}


def check_bit_assignment(model: nn.Module, bits: dict[str, int]) -> None:
    """Fail naming the layers if `bits` misses or adds a layer, or has a width the quantizer cannot use."""
    layers = set(quantizable_layers(model))
    missing = sorted(layers - set(bits))
    extra = sorted(set(bits) - layers)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing layers {missing}")
        if extra:
            parts.append(f"unknown layers {extra}")
        raise BitAssignmentError(
            f"bit assignment does not match the network ({'; '.join(parts)}); "
            f"give one bit-width for each of: {sorted(layers)}"
        )
    bad = {k: v for k, v in bits.items() if not valid_weight_bits(v)}
    if bad:
        raise BitAssignmentError(f"bit-widths must be integers in {MIN_WEIGHT_BITS}..{MAX_WEIGHT_BITS}, got {bad}")
