"""DisWOT (Dong et al., CVPR 2023): how alike a student's and a teacher's feature semantics and sample relations are.

Both networks run on the same batch at random initialisation. From the features that
feed each network's classifier (a CNN's map before global pooling, a ViT's tokens after
the final LayerNorm: [batch, channels, positions]):

- semantic matrix: the class activation map of class k at each position is
  relu(w_k . f) with the head's weights w_k (Grad-CAM's map when the head is linear on
  pooled features); the maps averaged over the batch give a [classes, positions] matrix
  M, and G = norm(M) norm(M)^T is the [classes, classes] semantic similarity;
- relation matrix: R = norm(F) norm(F)^T over the batch's flattened features, [batch, batch].

Each matrix is divided by its Frobenius norm, so networks of different widths and
resolutions compare. The DisWOT distance is ||G_t - G_s|| + ||R_t - R_s||; a smaller
distance predicts a better distilled student, so the baseline scores its negative.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)


class FeatureError(ValueError):
    """The network has no classifier features DisWOT can read (no head whose width matches them)."""


@dataclass
class DisWOTMatrices:
    """One network's semantic [classes, classes] and relation [batch, batch] matrices, Frobenius-normalised."""

    semantic: torch.Tensor
    relation: torch.Tensor


def head_features(net: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the features feeding the classifier [batch, channels, positions] and the head's weight [classes, channels].

    The features are the input of the last global pooling (CNNs) or, without one, the
    output of the last LayerNorm (ViTs: every token). The head is the last Linear.
    """
    pools = [m for m in net.modules() if isinstance(m, POOLS)]
    norms = [m for m in net.modules() if isinstance(m, nn.LayerNorm)]
    heads = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not heads or not (pools or norms):
        raise FeatureError("DisWOT needs a linear classifier fed by a global pooling or a final LayerNorm")
    grabbed: list[torch.Tensor] = []
    if pools:
        handle = pools[-1].register_forward_hook(lambda _m, args, _out: grabbed.append(args[0].detach()))
    else:
        handle = norms[-1].register_forward_hook(lambda _m, _args, out: grabbed.append(out.detach()))
    try:
        with torch.no_grad():
            net(images)
    finally:
        handle.remove()
    feats = grabbed[-1]
    feats = feats.flatten(2) if feats.dim() == 4 else feats.transpose(1, 2)  # [B, C, positions]
    weight = heads[-1].weight.detach()
    if weight.shape[1] != feats.shape[1]:
        raise FeatureError(f"the last Linear reads {weight.shape[1]} features but the pooled map has {feats.shape[1]} channels")
    return feats.to(torch.float64), weight.to(torch.float64)


def diswot_matrices(net: nn.Module, images: torch.Tensor) -> DisWOTMatrices:
    """Return a network's DisWOT matrices on `images` (the network is only run, never changed)."""
    feats, weight = head_features(net, images)
    cams = F.relu(torch.einsum("kc,bcs->bks", weight, feats)).mean(0)  # [classes, positions]
    semantic = F.normalize(cams, dim=1) @ F.normalize(cams, dim=1).T
    flat = F.normalize(feats.flatten(1), dim=1)
    relation = flat @ flat.T
    return DisWOTMatrices(semantic / semantic.norm().clamp_min(1e-12), relation / relation.norm().clamp_min(1e-12))


def diswot_distance(student: DisWOTMatrices, teacher: DisWOTMatrices) -> float:
    """Return ||G_t - G_s|| + ||R_t - R_s|| (Frobenius); the classes and the batch must match."""
    if student.semantic.shape != teacher.semantic.shape:
        raise FeatureError(f"student has {student.semantic.shape[0]} classes, teacher {teacher.semantic.shape[0]}")
    return float((teacher.semantic - student.semantic).norm() + (teacher.relation - student.relation).norm())
