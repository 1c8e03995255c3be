"""The arch space of `vit-digits`: tiny AutoFormer-style ViTs, how archs are drawn, and the network of one."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from emq.models.autoformer import autoformer


@dataclass(frozen=True)
class TinyViTSpace:
    """The arch space: AutoFormer's per-layer heads / MLP ratios, scaled down to 16x16 digits."""

    hidden_dim: tuple[int, ...] = (32, 48, 64)
    depth: tuple[int, ...] = (2, 3, 4, 5)
    num_heads: tuple[int, ...] = (2, 4)
    mlp_ratio: tuple[float, ...] = (1.0, 2.0, 3.0)
    img_size: int = 16
    patch_size: int = 4
    in_chans: int = 1
    num_classes: int = 10


def sample_archs(num: int, seed: int = 0, space: TinyViTSpace = TinyViTSpace()) -> list[dict[str, Any]]:
    """Return `num` distinct archs: depth and width uniform, then heads and MLP ratio uniform per layer."""
    rng = np.random.default_rng([seed, 0x71F])
    seen: set[str] = set()
    archs: list[dict[str, Any]] = []
    attempts = 0
    while len(archs) < num:
        attempts += 1
        if attempts > 100 * num + 1000:
            raise ValueError(f"could not draw {num} distinct archs from {space}")
        depth = int(rng.choice(space.depth))
        arch = {
            "hidden_dim": int(rng.choice(space.hidden_dim)),
            "depth": depth,
            "mlp_ratio": [float(r) for r in rng.choice(space.mlp_ratio, size=depth)],
            "num_heads": [int(h) for h in rng.choice(space.num_heads, size=depth)],
        }
        key = json.dumps(arch, sort_keys=True)
        if key not in seen:
            seen.add(key)
            archs.append(arch)
    return archs


def tiny_vit(arch: dict[str, Any], init_seed: int = 0, space: TinyViTSpace = TinyViTSpace()) -> nn.Module:
    """Return the tiny ViT of `arch` (AutoFormer layout at the space's image / patch size), in eval mode."""
    return autoformer(arch, init_seed, img_size=space.img_size, patch_size=space.patch_size,
                      in_chans=space.in_chans, num_classes=space.num_classes)


def space_from_json(data: dict[str, Any]) -> TinyViTSpace:
    """Return the TinyViTSpace that `asdict(space)` was written from (lists back to tuples)."""
    return TinyViTSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def valid_arch(arch: Any) -> bool:
    """True when `arch` is a well-formed tiny-ViT arch: positive sizes, one heads / MLP ratio entry per layer."""
    if not isinstance(arch, dict):
        return False
    dim, depth = arch.get("hidden_dim"), arch.get("depth")
    if not isinstance(dim, int) or not isinstance(depth, int) or dim < 1 or depth < 1:
        return False
    heads, ratios = arch.get("num_heads"), arch.get("mlp_ratio")
    return (isinstance(heads, list) and isinstance(ratios, list) and len(heads) == len(ratios) == depth
            and all(isinstance(h, int) and h >= 1 and dim % h == 0 for h in heads)
            and all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in ratios))
