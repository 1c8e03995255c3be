"""The CIFAR ResNet-56 (He et al. 2016, CIFAR variant): the distillation teacher of ViT-Bench-101's `_kd` columns.

conv3x3(3 -> 16) + BN + ReLU, three stages of 9 basic blocks at widths 16, 32 and 64
(the 2nd and 3rd strided, 1x1-conv shortcuts where the shape changes, as in the CRD
distillation code the KD literature uses), global average pooling and a linear head.
Module names: `conv1`, `layer1.0.conv1`, ..., `layer3.8.conv2`, `fc`.

The teacher is never trained here: it is built randomly initialised from a seed, as
DisWOT scores teacher-student pairs, and its BatchNorms normalise with the batch's
statistics (the state at the start of training; running statistics at initialisation
are the identity and let 27 residual blocks inflate the activations).
"""
from __future__ import annotations

import torch
from torch import nn

from emq.models.resnet import make_stage

RESNET56_BLOCKS = 9
RESNET56_WIDTHS = (16, 32, 64)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: n basic blocks per stage at widths 16, 32, 64."""

    def __init__(self, blocks: int = RESNET56_BLOCKS, num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, RESNET56_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = _batch_norm(RESNET56_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = RESNET56_WIDTHS[0]
        for i, planes in enumerate(RESNET56_WIDTHS, start=1):
            self.add_module(f"layer{i}", make_stage(in_planes, planes, blocks, 1 if i == 1 else 2, _batch_norm))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(RESNET56_WIDTHS[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet56(num_classes: int = 100, init_seed: int = 0) -> CifarResNet:
    """Return a randomly initialised CIFAR ResNet-56 (seeded, global RNG untouched) in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = CifarResNet(RESNET56_BLOCKS, num_classes)
    return model.eval()
