"""PiT subnets (the ViT-Bench-101 PiT space): pooling-based vision transformers in three stages.

An arch is a plain dict, as in Auto-Prox's ground-truth files::

    {"base_dim": 16 | 24 | 32 | 40, "mlp_ratio": 2 | 4 | 6 | 8,
     "depth": [d0, d1, d2], "num_heads": [h0, h1, h2]}   # heads from {2, 4, 8}, non-decreasing

`mlp_ratio` is one number for every block (Auto-Prox's space); a list of three
(one per stage) is accepted too. Stage s has width C_s = base_dim * num_heads[s]
(head dim = base_dim). Layout, after Auto-Prox's `PiT` (pycls/models/auto/pit_subnet.py,
itself from naver-ai/pit), read for the layer shapes:

- `patch_embed.proj`: Conv2d(in_chans, C_0, kernel patch_size (16), stride 8, no padding),
  a 224 input gives a 27x27 token map; `pos_embed` (1, C_0, 27, 27) is added to the map;
  one `cls_token` (1, 1, C_0);
- stage s: the cls token and the flattened map go through `stages.{s}.blocks.{i}`, the
  same pre-norm blocks as AutoFormer (emq/models/autoformer.py: `attn.qkv`, `attn.proj`,
  `mlp.fc1`, `mlp.fc2`, `norm1`, `norm2`; qkv with bias, exact GELU, LayerNorm eps 1e-6);
- between stages, `pools.{s}`: `conv` a depthwise-style Conv2d(C_s, C_{s+1}, kernel 3,
  stride 2, padding 1, groups C_s) on the token map (so num_heads[s+1] must be a
  multiple of num_heads[s]) and `fc` Linear(C_s, C_{s+1}) on the cls token;
- the final `norm` on the cls token, then `head` Linear(C_2, num_classes).

Initialisation as in PiT (seeded by `init_seed`): `pos_embed` and `cls_token`
truncated normal (std 0.02), LayerNorm (1, 0), every conv and Linear PyTorch's default.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from emq.models.autoformer import INIT_STD, LN_EPS, Block, PatchEmbed, block_params, seeded

NUM_STAGES = 3
#: The PiT subnet space of ViT-Bench-101 (Auto-Prox samples heads / depth from fixed triples).
PIT_SPACE: dict[str, tuple] = {
    "base_dim": (16, 24, 32, 40),
    "mlp_ratio": (2, 4, 6, 8),
    "num_heads": (2, 4, 8),
}


class Stage(nn.Module):
    """Transformer blocks over [cls token; flattened token map] at one width."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        tokens = torch.cat([cls, x.flatten(2).transpose(1, 2)], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        n_cls = cls.shape[1]
        x = tokens[:, n_cls:].transpose(1, 2).reshape(n, c, h, w)
        return x, tokens[:, :n_cls]


class Pool(nn.Module):
    """PiT's conv-head pooling: stride-2 grouped conv on the map, Linear on the cls token."""

    def __init__(self, in_dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        if out_dim % in_dim:
            raise ValueError(f"PiT pooling needs the next stage's width ({out_dim}) to be a multiple of "
                             f"this stage's ({in_dim}): num_heads must divide the next stage's num_heads")
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=stride + 1, stride=stride, padding=stride // 2,
                              groups=in_dim)
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), self.fc(cls)


class PiT(nn.Module):
    """A PiT subnet; see the module docstring for layout, names and initialisation."""

    def __init__(self, base_dim: int, depth: Sequence[int], num_heads: Sequence[int],
                 mlp_ratio: float | Sequence[float], img_size: int = 224, patch_size: int = 16, stride: int = 8,
                 in_chans: int = 3, num_classes: int = 100) -> None:
        super().__init__()
        ratios = list(mlp_ratio) if isinstance(mlp_ratio, (list, tuple)) else [mlp_ratio] * len(depth)
        if not (len(depth) == len(num_heads) == len(ratios) == NUM_STAGES):
            raise ValueError(f"PiT needs {NUM_STAGES} stages: depth {list(depth)}, num_heads {list(num_heads)}, "
                             f"mlp_ratio {mlp_ratio}")
        widths = [base_dim * int(h) for h in num_heads]
        self.widths = widths
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, widths[0], stride=stride)
        grid = self.patch_embed.grid
        self.pos_embed = nn.Parameter(torch.zeros(1, widths[0], grid, grid))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, widths[0]))
        self.stages = nn.ModuleList(Stage(widths[s], int(depth[s]), int(num_heads[s]), float(ratios[s]))
                                    for s in range(NUM_STAGES))
        self.pools = nn.ModuleList(Pool(widths[s], widths[s + 1]) for s in range(NUM_STAGES - 1))
        self.norm = nn.LayerNorm(widths[-1], eps=LN_EPS)
        self.head = nn.Linear(widths[-1], num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for s, stage in enumerate(self.stages):
            x, cls = stage(x, cls)
            if s < len(self.pools):
                x, cls = self.pools[s](x, cls)
        return self.head(self.norm(cls)[:, 0])


def pit(arch: dict[str, Any], init_seed: int = 0, *, img_size: int = 224, patch_size: int = 16, stride: int = 8,
        in_chans: int = 3, num_classes: int = 100) -> PiT:
    """Return the PiT subnet of `arch` (see the module docstring), seeded by `init_seed`, in eval mode."""
    with seeded(init_seed):
        model = PiT(int(arch["base_dim"]), list(arch["depth"]), list(arch["num_heads"]), arch["mlp_ratio"],
                    img_size=img_size, patch_size=patch_size, stride=stride, in_chans=in_chans,
                    num_classes=num_classes)
    return model.eval()


def pit_params(arch: dict[str, Any], *, img_size: int = 224, patch_size: int = 16, stride: int = 8, in_chans: int = 3,
               num_classes: int = 100) -> int:
    """Return the parameters of `pit(arch)` without building it (tested equal to `count_params`)."""
    widths = [int(arch["base_dim"]) * int(h) for h in arch["num_heads"]]
    ratio = arch["mlp_ratio"]
    ratios = list(ratio) if isinstance(ratio, (list, tuple)) else [ratio] * NUM_STAGES
    grid = (img_size - patch_size) // stride + 1
    total = in_chans * widths[0] * patch_size ** 2 + widths[0] + widths[0] * grid * grid + widths[0]
    total += sum(int(d) * block_params(w, float(r)) for d, w, r in zip(arch["depth"], widths, ratios))
    total += sum(9 * b + b + a * b + b for a, b in zip(widths, widths[1:]))  # pools: grouped 3x3 conv, fc
    return total + 2 * widths[-1] + widths[-1] * num_classes + num_classes
