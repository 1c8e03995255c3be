"""Sample-relation matrices at a network's stage outputs, so a student's and a teacher's stages compare.

A teacher's stage features cannot be compared with a student's directly: their widths,
resolutions and token counts differ (a ResNet-56 stage is [batch, 64, 8, 8], a ViT block
[batch, 197, 192]). Their batch x batch sample-relation matrices can, as in DisWOT and
relational KD: R = norm(F) norm(F)^T over each sample's flattened features, divided by its
Frobenius norm. Every network is read at `NUM_FEATURE_STAGES` points, so the student's
and the teacher's stacks have the same shape [stages, batch, batch]:

- networks with stages (`stages` list: PiT; `layer1..` / `stage1..`: ResNets, NB201) give
  their stage outputs;
- networks with one list of blocks (`blocks`: AutoFormer, the tiny ViTs) give the blocks at
  relative depths 1/3, 2/3 and 1 (block ceil(k * depth / 3) - 1), so students of different
  depths are read at the same fractions of their depth.

With more or fewer stages than `NUM_FEATURE_STAGES`, the same relative-depth rule picks them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emq.diswot import FeatureError

#: How many points of a network are read; the stage count of ResNet-56, PiT and NB201.
NUM_FEATURE_STAGES = 3
#: Attribute prefixes of numbered stage modules (`layer1`, `stage1`, ...), in the order tried.
STAGE_PREFIXES = ("layer", "stage")


def stage_list(net: nn.Module) -> list[nn.Module]:
    """Return the network's stages in forward order (see the module docstring), or raise FeatureError."""
    stages = getattr(net, "stages", None)
    if isinstance(stages, nn.ModuleList) and len(stages) > 0:
        return list(stages)
    for prefix in STAGE_PREFIXES:
        numbered = []
        while isinstance(getattr(net, f"{prefix}{len(numbered) + 1}", None), nn.Module):
            numbered.append(getattr(net, f"{prefix}{len(numbered) + 1}"))
        if numbered:
            return numbered
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
        return list(blocks)
    raise FeatureError(f"{type(net).__name__} has no stages to read (a `stages` list, `layer1..`/`stage1..` "
                       "modules or a `blocks` list)")


def feature_stages(net: nn.Module, count: int = NUM_FEATURE_STAGES) -> list[nn.Module]:
    """Return `count` stage modules at relative depths k/count (k = 1..count): stage ceil(k * n / count) - 1."""
    stages = stage_list(net)
    return [stages[max(math.ceil(k * len(stages) / count) - 1, 0)] for k in range(1, count + 1)]


def relation_matrix(features: torch.Tensor) -> torch.Tensor:
    """Return the Frobenius-normalised [batch, batch] cosine-similarity matrix of the samples' flattened features."""
    flat = F.normalize(features.flatten(1).to(torch.float64), dim=1)
    relation = flat @ flat.T
    return relation / relation.norm().clamp_min(1e-12)


def stage_relations(net: nn.Module, images: torch.Tensor, count: int = NUM_FEATURE_STAGES) -> torch.Tensor:
    """Return the relation matrices at the network's `count` feature stages, stacked [count, batch, batch].

    The network is only run (hooks are removed afterwards, nothing is changed). A stage
    returning a tuple (PiT: tokens and class token) is read at its first element.
    """
    picked = feature_stages(net, count)
    grabbed: dict[int, torch.Tensor] = {}

    def hook(module: nn.Module, _args: object, output: object) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        grabbed[id(module)] = out.detach()  # type: ignore[union-attr]

    handles = [m.register_forward_hook(hook) for m in {id(m): m for m in picked}.values()]
    try:
        with torch.no_grad():
            net(images)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([relation_matrix(grabbed[id(m)]) for m in picked])
