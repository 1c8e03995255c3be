"""Where a transformer exposes the `TRANSFORMER_STATS`, and what its extra entries weigh.

Hook points are found by module type, so every network built from the parts in
`emq.models.autoformer` (AutoFormer, PiT, the vit-digits tiny ViTs) has them:

| statistic | recorded from | stored under the entry |
|---|---|---|
| `attn`, `attn_grad` | `Attention.probs` (identity on the softmax output) | the attention module, `blocks.3.attn` |
| `head_out` | `Attention.heads` (identity on attn @ v) | the attention module |
| `mlp_hidden` | `Mlp.act` (the GELU) | the MLP's first layer, `blocks.3.mlp.fc1` |
| `ln_out` | every `nn.LayerNorm` | the LayerNorm, `blocks.3.norm1`, `norm` |

`attn_grad` is d loss / d attn at the softmax output (the loss being the mean
cross-entropy, as for `grad`). Only the first call of a module is recorded.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from emq.models.autoformer import Attention, Mlp
from emq.stats import TRANSFORMER_STATS


@dataclass(frozen=True)
class HookPoint:
    """One transformer statistic: the module whose forward output it is, and the entry it is stored under."""

    stat: str
    entry: str
    module: nn.Module


def has_transformer_parts(net: nn.Module) -> bool:
    """Return True when `net` has attention modules (so the transformer statistics exist)."""
    return any(isinstance(m, Attention) for m in net.modules())


def hook_points(net: nn.Module, wanted: set[str]) -> list[HookPoint]:
    """Return the hook points of the wanted transformer statistics, in module order (`attn_grad` needs `attn`'s)."""
    wanted = set(wanted) & set(TRANSFORMER_STATS)
    if "attn_grad" in wanted:
        wanted.add("attn")
    points: list[HookPoint] = []
    for name, m in net.named_modules():
        if isinstance(m, Attention):
            if "attn" in wanted:
                points.append(HookPoint("attn", name, m.probs))
            if "head_out" in wanted:
                points.append(HookPoint("head_out", name, m.heads))
        elif isinstance(m, Mlp) and "mlp_hidden" in wanted:
            points.append(HookPoint("mlp_hidden", f"{name}.fc1" if name else "fc1", m.act))
        elif isinstance(m, nn.LayerNorm) and "ln_out" in wanted:
            points.append(HookPoint("ln_out", name, m))
    return points


def entry_params(net: nn.Module, entry: str) -> int:
    """Return the weight count of a transformer entry: an attention module's qkv + proj weights, a LayerNorm's scale."""
    module = net.get_submodule(entry)
    if isinstance(module, Attention):
        return int(module.qkv.weight.numel() + module.proj.weight.numel())
    weight = getattr(module, "weight", None)
    return int(weight.numel()) if weight is not None else 0


def attention_macs(shape: tuple[int, ...], head_dim: int) -> int:
    """Return the multiply-accumulates per input of q @ k^T and attn @ v, 2 * heads * tokens^2 * head_dim,
    from the shape of `attn` or `head_out` (batch, heads, tokens, ...) of a self-attention."""
    heads, tokens = int(shape[1]), int(shape[2])
    return 2 * heads * tokens * tokens * int(head_dim)
