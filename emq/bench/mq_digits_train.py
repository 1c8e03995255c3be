"""Training the network of `mq-digits` and measuring its accuracy, float and after post-training quantization.

`train_digits_cnn` gives the trained, BatchNorm-folded `DigitsResNet` (deterministic
given the seed); `ptq_accuracy` is how every candidate's ground truth is measured, so
`emq apply mq --compare` measures its allocations the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emq.bench import digits
from emq.models.digits_cnn import DigitsResNet
from emq.models.resnet import fold_batchnorm
from emq.quant.fake_quant import quantized_model

#: Activation bits of every candidate (weights vary per layer).
ACT_BITS = 8


@dataclass(frozen=True)
class TrainConfig:
    """How the digits network is trained (SGD + one-cycle; +-1 px random shifts)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_shift: int = 1


def train_digits_cnn(seed: int = 0, config: TrainConfig = TrainConfig(), progress: bool = False) -> DigitsResNet:
    """Return the trained network with BatchNorm folded, in eval mode (deterministic given `seed`)."""
    x_train, y_train = digits.train_split(seed)
    with deterministic(seed):
        model = DigitsResNet()
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, nesterov=True)
        steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
        g = torch.Generator().manual_seed(seed)
        epochs = range(config.epochs)
        if progress:
            from tqdm import tqdm

            epochs = tqdm(epochs, desc="train digits CNN", unit="epoch")
        for _ in epochs:
            model.train()
            perm = torch.randperm(len(x_train), generator=g)
            for i in range(0, len(x_train), config.batch_size):
                idx = perm[i:i + config.batch_size]
                x = _random_shift(x_train[idx], config.max_shift, g)
                loss = F.cross_entropy(model(x), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    return fold_batchnorm(model)


def _random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift the whole batch by up to `max_shift` pixels (edge-replicated), a cheap augmentation."""
    if max_shift <= 0:
        return x
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2,), generator=g).tolist()
    return padded[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]


class deterministic:
    """Seed torch and force deterministic kernels for a block, restoring the previous setting after."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)
        self._was = torch.are_deterministic_algorithms_enabled()
        self._warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: Any) -> None:
        torch.use_deterministic_algorithms(self._was, warn_only=self._warn_only)
        self._fork.__exit__(*exc)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Return top-1 accuracy (a fraction) of `model` on (`x`, `y`)."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def ptq_accuracy(model: nn.Module, bits: dict[str, int], calib: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 act_bits: int = ACT_BITS) -> float:
    """Return the test accuracy of `model` after post-training quantization to `bits` (weights) and `act_bits`."""
    return accuracy(quantized_model(model, bits, act_bits=act_bits, calib_inputs=calib), x, y)
