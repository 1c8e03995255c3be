"""ResNet building blocks, ResNet-18 in torchvision's layout, and BatchNorm folding.

torchvision is not a dependency, so ResNet-18 is written out here with exactly
torchvision's module names (`conv1`, `bn1`, `layer1.0.conv1`, ...,
`layer2.0.downsample.0`, `fc`), so a torchvision state dict loads with
`strict=True`. Its 21 quantizable layers, in forward order:

    conv1, layer1.0.conv1, layer1.0.conv2, layer1.1.conv1, layer1.1.conv2,
    layer2.0.conv1, layer2.0.conv2, layer2.0.downsample.0, layer2.1.conv1, layer2.1.conv2,
    layer3.0.conv1, ..., layer4.1.conv2, fc

Post-training quantization works on *deployed* weights, so `fold_batchnorm` merges
each BatchNorm (eval statistics) into the conv before it; the conv gains a bias and
the BatchNorm becomes `nn.Identity`, which keeps every conv/linear name unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET18_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a 1x1 conv `downsample` when stride or width change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), norm(planes))

    def conv_bn_pairs(self, prefix: str) -> list[tuple[str, str]]:
        pairs = [(f"{prefix}conv1", f"{prefix}bn1"), (f"{prefix}conv2", f"{prefix}bn2")]
        if self.downsample is not None:
            pairs.append((f"{prefix}downsample.0", f"{prefix}downsample.1"))
        return pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_stage(in_planes: int, planes: int, blocks: int, stride: int,
               norm: Callable[[int], nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    """Return `blocks` BasicBlocks, the first one strided."""
    layers = [BasicBlock(in_planes, planes, stride, norm)]
    layers += [BasicBlock(planes, planes, 1, norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18(nn.Module):
    """ResNet-18 for 224x224 RGB input, torchvision's module names and initialisation scheme."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes = 64
        for i, (planes, blocks) in enumerate(zip(RESNET18_WIDTHS, RESNET18_BLOCKS), start=1):
            self.add_module(f"layer{i}", make_stage(in_planes, planes, blocks, 1 if i == 1 else 2))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """Return (conv name, BatchNorm name) for every BatchNorm, to fold them."""
        pairs = [("conv1", "bn1")]
        for i in range(1, 5):
            for j, block in enumerate(getattr(self, f"layer{i}")):
                pairs += block.conv_bn_pairs(f"layer{i}.{j}.")
        return pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, init_seed: int = 0, weights: str | Path | None = None,
             fold_bn: bool = True) -> ResNet18:
    """Return a ResNet-18 in eval mode: seeded random init, or `weights` loaded; BatchNorm folded by default.

    The global RNG is left untouched (the init runs in a forked RNG). `weights` is a
    `.safetensors` file or a `torch.save`d state dict (read with `weights_only=True`)
    using torchvision's key names.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = ResNet18(num_classes)
    if weights is not None:
        model.load_state_dict(load_state_dict(weights), strict=True)
    model.eval()
    if fold_bn:
        fold_batchnorm(model)
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Return the tensors of a `.safetensors` file or of a plain `torch.save`d state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict mapping names to tensors")
    return state


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every (conv, BatchNorm) pair of `model.conv_bn_pairs()` in place; returns `model`.

    Uses the BatchNorm's running statistics (eval-mode semantics): the conv becomes
    `w * gamma / sqrt(var + eps)` with bias `beta + (b - mean) * gamma / sqrt(var + eps)`
    and the BatchNorm is replaced by `nn.Identity`, so eval outputs are unchanged.
    """
    for conv_name, bn_name in model.conv_bn_pairs():  # type: ignore[operator]
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        if isinstance(bn, nn.Identity):
            continue
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"cannot fold {bn_name} ({type(bn).__name__}) into {conv_name} ({type(conv).__name__})")
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bn.bias + (bias - bn.running_mean) * scale)
        parent_name, _, child = bn_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
    return model
