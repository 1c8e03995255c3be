"""AutoFormer subnets (the ViT-Bench-101 AutoFormer-Ti space) and the transformer parts PiT reuses.

An arch is a plain dict, as in Auto-Prox's ground-truth files::

    {"hidden_dim": 192 | 216 | 240, "depth": 12..14,
     "mlp_ratio": [3.5 | 4.0 per layer], "num_heads": [3 | 4 per layer]}

The network follows Auto-Prox's `AutoFormerSub` (pycls/models/auto/autoformer_subnet.py
and common.py, read for the layer shapes):

- `patch_embed.proj`: Conv2d(in_chans, hidden, kernel = stride = patch_size);
- a cls token and a learned position embedding over (1 + num_patches) tokens;
- `depth` pre-norm blocks: x + attn(norm1(x)), then x + mlp(norm2(x)). The attention
  width equals hidden_dim, split across the layer's heads (head dim =
  hidden_dim // heads): `attn.qkv` Linear(hidden, 3 * hidden) with bias, `attn.proj`
  Linear(hidden, hidden). The MLP is `mlp.fc1` Linear(hidden, int(ratio * hidden)),
  exact GELU, `mlp.fc2` back to hidden. LayerNorm eps 1e-6;
- a final LayerNorm `norm`, then `head` Linear(hidden, num_classes).

Pooling: Auto-Prox's subnet classifies the *mean of the patch tokens* after the final
norm (the cls token takes part in attention but is not read out). That is the
default here (`pool="mean"`) so that statistics match the networks the published
proxies were computed on; `pool="cls"` reads the cls token instead (DeiT style).

Initialisation (seeded by `init_seed`, global RNG untouched): Linear weights, cls
token and position embedding truncated normal (std 0.02), biases zero, LayerNorm
(1, 0), the patch conv PyTorch's default.

Module names are stable because statistics are keyed by them: `patch_embed.proj`,
`blocks.{i}.norm1`, `blocks.{i}.attn.qkv`, `blocks.{i}.attn.proj`, `blocks.{i}.norm2`,
`blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2`, `norm`, `head` (plus the parameter-free
hook points `blocks.{i}.attn.probs`, `blocks.{i}.attn.heads`, `blocks.{i}.mlp.act`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6
INIT_STD = 0.02
#: The AutoFormer-Ti subnet space of ViT-Bench-101.
AUTOFORMER_TI_SPACE: dict[str, tuple] = {
    "hidden_dim": (192, 216, 240),
    "depth": (12, 13, 14),
    "mlp_ratio": (3.5, 4.0),
    "num_heads": (3, 4),
}


class Attention(nn.Module):
    """Multi-head self-attention; with `keep_attn = True` the softmax output of the last call is `last_attn`.

    `last_attn` (batch, heads, tokens, tokens) stays in the autograd graph (not
    detached) so a statistic can take its gradient; keeping it changes no result.
    It is dropped when the module is copied or pickled (a non-leaf tensor cannot be
    deep-copied).

    Two parameter-free hook points let forward hooks see (and replace) intermediate
    tensors without changing outputs, parameter counts or state dicts: `probs`
    (an identity on the softmax output, batch x heads x tokens x tokens) and
    `heads` (an identity on the per-head outputs attn @ v, batch x heads x tokens
    x head_dim, before the heads are merged); the statistics use them.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.probs = nn.Identity()
        self.heads = nn.Identity()
        self.keep_attn = False
        self.last_attn: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        # Same layout as Auto-Prox: (3, batch, heads, tokens, head_dim).
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.probs(F.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1))
        self.last_attn = attn if self.keep_attn else None
        out = self.heads(attn @ v).transpose(1, 2).reshape(n, length, dim)
        return self.proj(out)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["last_attn"] = None
        return state


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2, hidden width int(dim * ratio) (Auto-Prox's rounding)."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"mlp ratio {ratio} gives an empty hidden layer for width {dim}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Conv patch embedding: (n, c, H, W) -> (n, tokens, dim) with `proj` a Conv2d."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, stride: int | None = None) -> None:
        super().__init__()
        stride = patch_size if stride is None else stride
        if img_size < patch_size:
            raise ValueError(f"image size {img_size} is smaller than the patch size {patch_size}")
        self.img_size = img_size
        self.grid = (img_size - patch_size) // stride + 1
        self.num_patches = self.grid ** 2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected {self.img_size}x{self.img_size} images, got {tuple(x.shape[-2:])}")
        return self.proj(x)  # (n, dim, grid, grid); callers flatten


@contextmanager
def seeded(init_seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for a block, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        yield


class AutoFormer(nn.Module):
    """An AutoFormer subnet; see the module docstring for layout, names and initialisation."""

    def __init__(self, hidden_dim: int, depth: int, mlp_ratio: Sequence[float], num_heads: Sequence[int],
                 img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 100,
                 pool: str = "mean") -> None:
        super().__init__()
        if len(mlp_ratio) != depth or len(num_heads) != depth:
            raise ValueError(f"mlp_ratio and num_heads need one entry per layer (depth {depth}), "
                             f"got {len(mlp_ratio)} and {len(num_heads)}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        self.pool = pool
        self.hidden_dim = hidden_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, hidden_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, hidden_dim))
        self.blocks = nn.ModuleList(Block(hidden_dim, int(h), float(r)) for h, r in zip(num_heads, mlp_ratio))
        self.norm = nn.LayerNorm(hidden_dim, eps=LN_EPS)
        self.head = nn.Linear(hidden_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 1:].mean(1) if self.pool == "mean" else x[:, 0])


def init_transformer_weights(m: nn.Module) -> None:
    """Truncated-normal Linear weights with zero bias, LayerNorm (1, 0) (Auto-Prox / timm ViT init)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=INIT_STD)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def autoformer(arch: dict[str, Any], init_seed: int = 0, *, img_size: int = 224, patch_size: int = 16,
               in_chans: int = 3, num_classes: int = 100, pool: str = "mean") -> AutoFormer:
    """Return the AutoFormer subnet of `arch` (see the module docstring), seeded by `init_seed`, in eval mode."""
    with seeded(init_seed):
        model = AutoFormer(int(arch["hidden_dim"]), int(arch["depth"]), list(arch["mlp_ratio"]),
                           list(arch["num_heads"]), img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           num_classes=num_classes, pool=pool)
    return model.eval()


def set_keep_attn(model: nn.Module, keep: bool = True) -> list[str]:
    """Switch `keep_attn` on every Attention module of `model`; return their names (in forward order)."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            m.keep_attn = keep
            if not keep:
                m.last_attn = None
            names.append(name)
    return names


def attention_maps(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return {attention module name: its last softmax output} for modules that kept one."""
    return {name: m.last_attn for name, m in model.named_modules()
            if isinstance(m, Attention) and m.last_attn is not None}


def block_params(dim: int, mlp_ratio: float) -> int:
    """Return the parameters of one `Block` of width `dim` (two LayerNorms, qkv, proj, fc1, fc2), without building it."""
    hidden = int(dim * mlp_ratio)
    return 4 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)


def autoformer_params(arch: dict[str, Any], *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                      num_classes: int = 100) -> int:
    """Return the parameters of `autoformer(arch)` without building it (tested equal to `count_params`).

    Lets a loader refuse an arch too large to build before any memory is asked for.
    """
    dim = int(arch["hidden_dim"])
    tokens = ((img_size - patch_size) // patch_size + 1) ** 2 + 1
    embed = in_chans * dim * patch_size ** 2 + dim + dim + tokens * dim  # patch conv, cls token, positions
    blocks = sum(block_params(dim, float(r)) for r in arch["mlp_ratio"])
    return embed + blocks + 2 * dim + dim * num_classes + num_classes


def count_params(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
