"""Which modules are quantizable layers, keyed by module path."""
from __future__ import annotations

from torch import nn

QUANTIZABLE = (nn.Conv2d, nn.Linear)


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Return conv/linear modules by name, in registration order (the forward order for our nets)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}


def check_bit_assignment(model: nn.Module, bits: dict[str, int]) -> None:
    """Fail naming the layers if `bits` misses or adds a layer, or has a non-positive width."""
    layers = set(quantizable_layers(model))
    missing = sorted(layers - set(bits))
    extra = sorted(set(bits) - layers)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing layers {missing}")
        if extra:
            parts.append(f"unknown layers {extra}")
        raise ValueError(
            f"bit assignment does not match the network ({'; '.join(parts)}); "
            f"give one bit-width for each of: {sorted(layers)}"
        )
    bad = {k: v for k, v in bits.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v > 32}
    if bad:
        raise ValueError(f"bit-widths must be integers in 1..32, got {bad}")
