"""The small ResNet of the embedded `mq-digits` benchmark (16x16 grey digits, 10 classes).

Layout: a 3x3 `stem` conv (16 channels), three stages of two BasicBlocks
(16 / 32 / 64 channels, stride 2 at the start of stages 2 and 3, a 1x1
`downsample.0` conv on the residual where the shape changes), global average
pooling and a linear `head`. 16 quantizable layers, 175k parameters:

    stem, stage1.0.conv1, stage1.0.conv2, stage1.1.conv1, stage1.1.conv2,
    stage2.0.conv1, stage2.0.conv2, stage2.0.downsample.0, stage2.1.conv1, stage2.1.conv2,
    stage3.0.conv1, stage3.0.conv2, stage3.0.downsample.0, stage3.1.conv1, stage3.1.conv2, head

It is trained with BatchNorm, which is then folded into the convs
(`emq.models.resnet.fold_batchnorm`): the benchmark's network has no BatchNorm,
and each quantizable layer's weight already includes its BatchNorm scale, as in a
real post-training-quantization deployment. `digits_resnet(folded=True)` builds
that deployed layout (convs with bias, `nn.Identity` in place of each BatchNorm),
whose state dict is what `model.safetensors` holds.
"""
from __future__ import annotations

import torch
from torch import nn

from emq.models.resnet import fold_batchnorm, make_stage

DIGITS_WIDTHS = (16, 32, 64)
DIGITS_BLOCKS = (2, 2, 2)


class DigitsResNet(nn.Module):
    """ResNet for (n, 1, 16, 16) inputs; see the module docstring for the layer names."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, DIGITS_WIDTHS[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(DIGITS_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = DIGITS_WIDTHS[0]
        for i, (planes, blocks) in enumerate(zip(DIGITS_WIDTHS, DIGITS_BLOCKS), start=1):
            self.add_module(f"stage{i}", make_stage(in_planes, planes, blocks, 1 if i == 1 else 2))
            in_planes = planes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(in_planes, num_classes)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Return (conv name, BatchNorm name) for every BatchNorm, to fold them."""
        pairs = [("stem", "stem_bn")]
        for i in range(1, len(DIGITS_WIDTHS) + 1):
            for j, block in enumerate(getattr(self, f"stage{i}")):
                pairs += block.conv_bn_pairs(f"stage{i}.{j}.")
        return pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem_bn(self.stem(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.head(torch.flatten(self.pool(x), 1))


def digits_resnet(folded: bool = False, num_classes: int = 10) -> DigitsResNet:
    """Return an untrained DigitsResNet; with `folded`, in the deployed layout (no BatchNorm, conv biases).

    The folded layout is obtained by folding a freshly initialised network, so its
    parameter names and shapes match `model.safetensors`; load trained weights into it.
    """
    with torch.random.fork_rng(devices=[]):  # callers' RNG streams stay untouched
        model = DigitsResNet(num_classes)
    if folded:
        model.eval()
        fold_batchnorm(model)
    return model

